"""The vLLM backend, for real, where a CUDA GPU and the `vllm` extra exist (the lent GPU
machine); skipped elsewhere. It serves the embedded SmolLM2 folder (already converted to a
transformers model), so no hub access is needed."""

import math

import pytest

vllm = pytest.importorskip("vllm")
torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA GPU")]


def test_vllm_backend_chats_and_scores_yes_no():
    from mmotif.llm import make_backend
    from mmotif.llm.weights import ensure_model

    folder = ensure_model("smollm2-135m")
    backend = make_backend("vllm", model=str(folder), max_model_len=2048, gpu_memory_utilization=0.3)
    replies = backend.chat([[{"role": "user", "content": "Say hello."}]] * 2, max_tokens=16)
    assert len(replies) == 2 and all(isinstance(r, str) and r for r in replies)
    scores = backend.yes_no_scores([[{"role": "user", "content": "Is fire hot? Answer Yes or No."}]])
    assert len(scores) == 1 and math.isfinite(scores[0])
