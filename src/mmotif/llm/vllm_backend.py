"""vLLM in-process backend (GPU annotators; the `vllm` extra).

One `vllm.LLM` engine per annotator actor, tensor parallel over the GPUs of its placement
group, with prefix caching (every annotation prompt shares the long instruction prefix).
Chat prompts are rendered by the model's own chat template (`LLM.chat`). `yes_no_scores`
asks for one token with its top log-probabilities and sums the Yes / No variants.

vLLM is imported only when this backend is built, so the CPU install never needs it.
"""

from __future__ import annotations

import math

from mmotif.llm.base import NO_WORDS, YES_WORDS, BackendError, LLMBackend, Message, logsumexp

TOP_LOGPROBS = 20  # enough to see both answers on any sane instruct model
MISSING_LOGPROB = -30.0  # stands for an answer outside the top log-probabilities


class VLLMBackend(LLMBackend):
    name = "vllm"

    def __init__(self, model: str, tensor_parallel_size: int = 1, dtype: str = "auto",
                 max_model_len: int = 8192, gpu_memory_utilization: float = 0.9,
                 top_k: int = 50, seed: int = 1516, enable_prefix_caching: bool = True,
                 top_p: float = 1.0):
        try:
            import vllm
        except ImportError as err:
            raise BackendError("the vllm backend needs the `vllm` extra: pip install 'mmotif[vllm]' "
                               "(on a machine with a CUDA GPU)") from err
        self._vllm = vllm
        self.model = model
        self.top_p, self.top_k = top_p, top_k
        # The spec leaves Llama 3.1's 128k context uncapped; annotation prompts are ~0.5k
        # tokens plus up to 4k of answer, so a cap saves KV-cache memory (spec §3.3).
        self.llm = vllm.LLM(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                            max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                            enable_prefix_caching=enable_prefix_caching, seed=seed)

    def chat(self, messages_batch: list[list[Message]], max_tokens: int = 512, temperature: float = 0.0,
             top_p: float | None = None, seed: int | None = None, top_k: int | None = None) -> list[str]:
        top_p, top_k = self.sampling(top_p, top_k)
        params = self._vllm.SamplingParams(
            temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
            top_k=top_k if temperature > 0 and top_k > 0 else -1, max_tokens=max_tokens, seed=seed)
        outputs = self.llm.chat(messages_batch, params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]

    def yes_no_scores(self, prompts: list[list[Message]]) -> list[float]:
        params = self._vllm.SamplingParams(temperature=0.0, max_tokens=1, logprobs=TOP_LOGPROBS)
        outputs = self.llm.chat(prompts, params, use_tqdm=False)
        return [self._score(o.outputs[0].logprobs[0]) for o in outputs]

    @staticmethod
    def _score(top: dict) -> float:
        yes, no = [], []
        for entry in top.values():
            word = entry.decoded_token or ""
            if word in YES_WORDS:
                yes.append(entry.logprob)
            elif word in NO_WORDS:
                no.append(entry.logprob)
        y = logsumexp(yes) if yes else MISSING_LOGPROB
        n = logsumexp(no) if no else MISSING_LOGPROB
        return y - n if math.isfinite(y - n) else 0.0
