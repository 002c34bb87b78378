"""The one interface every LLM backend implements (annotators and the coder alike)."""

from __future__ import annotations

import abc
import math

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}

# First answer tokens counted as "Yes" / "No" by yes_no_scores (with and without a leading
# space, which tokenizers treat as different tokens).
YES_WORDS = ("Yes", " Yes", "yes", " yes", "YES", " YES")
NO_WORDS = ("No", " No", "no", " no", "NO", " NO")


class BackendError(RuntimeError):
    """A backend could not answer (server gone, bad response, model missing)."""


class LLMBackend(abc.ABC):
    """Chat completions and Yes/No scores from one model.

    `name` is the backend kind ("embedded", "openai", "vllm"); `model` names the model. Both
    are recorded in every Preference the backend produces. `top_p` and `top_k` are the
    backend's sampling settings (from its config section), used by `chat` when a call gives
    none; top_k <= 0 is off. Greedy calls (temperature 0) ignore both.
    """

    name: str = "abstract"
    model: str = ""
    top_p: float = 1.0
    top_k: int = -1

    @abc.abstractmethod
    def chat(
        self,
        messages_batch: list[list[Message]],
        max_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        top_k: int | None = None,
    ) -> list[str]:
        """One assistant reply per conversation, in order. temperature 0 means greedy;
        top_p / top_k None: the backend's own (see `sampling`)."""

    def sampling(self, top_p: float | None = None, top_k: int | None = None) -> tuple[float, int]:
        """(top_p, top_k) of one call: the call's values, else the backend's."""
        return (self.top_p if top_p is None else top_p), (self.top_k if top_k is None else top_k)

    @abc.abstractmethod
    def yes_no_scores(self, prompts: list[list[Message]]) -> list[float]:
        """log P(Yes) - log P(No) of the first assistant token, per conversation, in order.

        Each side sums the probabilities of its variants (YES_WORDS / NO_WORDS). Larger means
        the model leans to "Yes".
        """

    def close(self) -> None:
        """Release resources (models, connections). The default does nothing."""

    def __enter__(self) -> LLMBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r})"


def logsumexp(values: list[float]) -> float:
    """log(sum(exp(v))) of a non-empty list, stable for large negative values."""
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))
