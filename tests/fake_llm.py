"""A stand-in for an LLM backend behind mmotif's OpenAI-compatible server (no model)."""


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
