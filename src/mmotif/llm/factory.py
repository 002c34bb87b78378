"""The one place an LLM backend is built: by kind (`make_backend`) or from a config section
(`backend_from_config`: `annotator:` or `coder:`, any object with the fields of
:class:`mmotif.config.LLMConfig`)."""

from __future__ import annotations

import os

from mmotif.llm.base import LLMBackend

BACKENDS = ("embedded", "openai", "vllm")


def make_backend(kind: str, **kwargs) -> LLMBackend:
    """Build a backend by kind: "embedded", "openai" or "vllm" (keyword arguments go to its class)."""
    if kind == "embedded":
        from mmotif.llm.embedded import EmbeddedBackend

        return EmbeddedBackend(**kwargs)
    if kind == "vllm":
        from mmotif.llm.vllm_backend import VLLMBackend

        return VLLMBackend(**kwargs)
    if kind in ("openai", "openai_http"):
        from mmotif.llm.openai_http import OpenAIHTTPBackend

        return OpenAIHTTPBackend(**kwargs)
    raise ValueError(f"unknown LLM backend {kind!r}; use 'embedded', 'openai' or 'vllm'")


def backend_from_config(llm, *, section: str = "llm", cache_dir: str | os.PathLike | None = None) -> LLMBackend:
    """The backend a config section describes: its kind, model, server and sampling (top_p,
    top_k; temperature and max_tokens are given per call). Engine settings a section may have
    (threads, batch_size, tensor_parallel_size) are used where present. `section` names the
    section in errors; `cache_dir` is the embedded model cache (paths.model_cache)."""
    sampling = {"top_p": llm.top_p, "top_k": llm.top_k}
    if llm.backend == "embedded":
        engine = {"num_threads": getattr(llm, "threads", None), "batch_size": getattr(llm, "batch_size", 8)}
        return make_backend("embedded", model=llm.model, cache_dir=cache_dir, **engine, **sampling)
    if llm.backend == "openai":
        if not llm.base_url:
            raise ValueError(f"{section}.backend is 'openai' but {section}.base_url is not set")
        concurrency = llm.max_concurrency or getattr(llm, "batch_size", None) or 4
        return make_backend("openai", base_url=llm.base_url, model=llm.model, timeout_s=llm.request_timeout_s,
                            max_concurrency=concurrency, **sampling)
    if llm.backend == "vllm":
        return make_backend("vllm", model=llm.model, tensor_parallel_size=getattr(llm, "tensor_parallel_size", 1),
                            **sampling)
    raise ValueError(f"{section}.backend {llm.backend!r} is not an LLM backend; use one of {', '.join(BACKENDS)}")


def recorded_model_name(llm) -> str:
    """The model name the backend a config section describes records in its labels (without
    building it)."""
    if llm.backend == "embedded":
        from mmotif.llm.weights import embedded_model_name

        return embedded_model_name(llm.model)
    return llm.model
