"""Stand-ins for LLM backends (no model): behind mmotif's OpenAI-compatible server, and a
scripted coder for the control flow of code generation."""


class FakeModel:
    """What openai_server needs of a backend, without a model."""

    model = "fake-model"

    class tokenizer:  # noqa: N801
        @staticmethod
        def encode(text, add_special_tokens=False):
            return text.split()

    def __init__(self):
        self.sampled = []  # (temperature, top_p, top_k) of each chat call

    def chat(self, batch, max_tokens=256, temperature=1.0, top_p=None, seed=None, top_k=None):
        self.sampled.append((temperature, top_p, top_k))
        return ["Answer: best_description: 2"] * len(batch)

    def first_token_logprobs(self, batch, k=1):
        return [[(" Yes", -0.2), (" No", -1.9), (" Maybe", -4.0)][:k]] * len(batch)


class ScriptedLLM:
    """Stand-in for an LLMBackend: returns prepared replies in order (control flow only)."""

    name, model = "scripted", "stand-in"

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls: list[list[dict]] = []

    def chat(self, messages_batch, max_tokens=512, temperature=0.0, **_):
        self.calls.extend(messages_batch)
        return [self.replies.pop(0) for _ in messages_batch]
