"""A client for any OpenAI-compatible chat-completions server (vLLM, llama.cpp's server,
transformers serve, mmotif's own :mod:`~mmotif.annotators.backends.openai_server`, ...).

Standard library only (``urllib``): no extra dependency. Each request has a socket timeout;
connection failures, timeouts, HTTP 429 and 5xx are retried with exponential backoff and
jitter, then reported as a :class:`BackendError` naming the URL, the attempts and the last
error. Other 4xx answers fail at once (retrying a bad request does not help).

``yes_no_scores`` asks for one token with ``logprobs``/``top_logprobs``; a server that rejects
or ignores them is remembered, and from then on the client asks for a one-word answer instead
and scores Yes = +1, No = -1, anything else 0 (coarser: pairs of equal answers become ties).
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import random
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from mmotif.annotators.backends.base import BackendError, LLMBackend, Message, logsumexp

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class HTTPStatusError(BackendError):
    """The server answered with an HTTP error status that is not worth retrying."""

    def __init__(self, message: str, status: int, body: str):
        super().__init__(message)
        self.status = status
        self.body = body


class OpenAIHTTPBackend(LLMBackend):
    """Chat completions over HTTP.

    `base_url` includes the API prefix, as with the OpenAI SDK: ``http://127.0.0.1:8000/v1``.
    `concurrency` requests are in flight at once (the server batches them if it can).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        concurrency: int = 4,
        top_logprobs: int = 20,
        use_logprobs: bool | None = None,
    ):
        if max_retries < 0 or concurrency < 1 or timeout_s <= 0:
            raise ValueError("need max_retries >= 0, concurrency >= 1 and timeout_s > 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.concurrency = concurrency
        self.top_logprobs = top_logprobs
        # None: find out on the first yes_no_scores call; True/False: known.
        self.use_logprobs = use_logprobs
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="openai-http")

    # -- HTTP --------------------------------------------------------------------------------

    def _request_once(self, method: str, path: str, body: dict | None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read().decode("utf-8"))

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One JSON request with retries; raises BackendError when it cannot succeed."""
        url = self.base_url + path
        start = time.monotonic()
        last: str = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
            try:
                return self._request_once(method, path, body)
            except urllib.error.HTTPError as error:
                text = error.read().decode("utf-8", "replace")[:500]
                if error.code not in _RETRY_STATUS:
                    raise HTTPStatusError(f"{method} {url}: HTTP {error.code}: {text}", error.code, text) from None
                last = f"HTTP {error.code}: {text}"
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                    TimeoutError, socket.timeout, OSError, ValueError) as error:
                # URLError wraps refused connections; ValueError covers a truncated JSON body.
                reason = getattr(error, "reason", error)
                last = f"{type(reason).__name__}: {reason}"
            log.warning("%s %s failed (attempt %d/%d): %s", method, url, attempt + 1, self.max_retries + 1, last)
        raise BackendError(
            f"{method} {url}: no answer after {self.max_retries + 1} attempts in "
            f"{time.monotonic() - start:.1f} s; last error: {last}"
        )

    def list_models(self) -> list[str]:
        return [m.get("id", "") for m in self.request("GET", "/models").get("data", [])]

    # -- chat --------------------------------------------------------------------------------

    def _completion(self, messages: list[Message], **params) -> dict:
        body = {"model": self.model, "messages": messages, **{k: v for k, v in params.items() if v is not None}}
        answer = self.request("POST", "/chat/completions", body)
        choices = answer.get("choices") or []
        if not choices:
            raise BackendError(f"{self.base_url}: completion without choices: {str(answer)[:300]}")
        return choices[0]

    def _map(self, fn, items: list) -> list:
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(item) for item in items]
        return list(self._pool.map(fn, items))

    def chat(
        self,
        messages_batch: list[list[Message]],
        max_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[str]:
        def one(messages: list[Message]) -> str:
            choice = self._completion(
                messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed
            )
            return ((choice.get("message") or {}).get("content") or "").strip()

        return self._map(one, messages_batch)

    # -- yes/no scores -----------------------------------------------------------------------

    @staticmethod
    def _score_from_top(top: list[dict]) -> float | None:
        yes, no, listed = [], [], []
        for entry in top:
            token, logprob = entry.get("token", ""), entry.get("logprob")
            if logprob is None or not math.isfinite(float(logprob)):
                continue
            listed.append(float(logprob))
            word = token.strip().lower()
            if word == "yes":
                yes.append(float(logprob))
            elif word == "no":
                no.append(float(logprob))
        if not listed or (not yes and not no):
            return None
        # A side missing from the top-k is at most as likely as the least likely listed token.
        floor = min(listed)
        return logsumexp(yes or [floor]) - logsumexp(no or [floor])

    def _logprob_score(self, messages: list[Message]) -> float | None:
        choice = self._completion(
            messages, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=self.top_logprobs
        )
        content = ((choice.get("logprobs") or {}).get("content")) or []
        if not content or "top_logprobs" not in content[0]:
            raise _NoLogprobs()
        score = self._score_from_top(content[0]["top_logprobs"] or [])
        if score is None:  # neither Yes nor No among the likeliest tokens: read the answer
            return _word_score(((choice.get("message") or {}).get("content")) or "")
        return score

    def _word_score(self, messages: list[Message]) -> float:
        return _word_score(self.chat([messages], max_tokens=3, temperature=0.0)[0])

    def yes_no_scores(self, prompts: list[list[Message]]) -> list[float]:
        if not prompts:
            return []
        if self.use_logprobs is not False:
            try:
                first = self._logprob_score(prompts[0])
                self.use_logprobs = True
            except (_NoLogprobs, HTTPStatusError) as error:
                if isinstance(error, HTTPStatusError) and error.status not in (400, 422):
                    raise
                log.warning("%s does not return logprobs; scoring one-word answers instead", self.base_url)
                self.use_logprobs = False
            else:
                return [first, *self._map(self._logprob_score, prompts[1:])]
        return self._map(self._word_score, prompts)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _NoLogprobs(Exception):
    pass


def _word_score(answer: str) -> float:
    words = answer.strip().lower().split()
    word = words[0].strip(".,!:;\"'*") if words else ""
    return {"yes": 1.0, "no": -1.0}.get(word, 0.0)
