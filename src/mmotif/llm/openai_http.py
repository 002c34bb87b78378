"""A client for any OpenAI-compatible chat-completions server (vLLM, llama.cpp's server,
transformers serve, mmotif's own :mod:`~mmotif.llm.openai_server`, ...).

Standard library only (``http.client``): no extra dependency. Limits on every attempt:

* ``timeout_s`` bounds each socket operation (connect, each read) and ``deadline_s`` (default:
  ``timeout_s``) the whole attempt, however slowly a server drips bytes: a watchdog shuts the
  socket down at the deadline.
* ``max_response_bytes`` (16 MiB) caps the body: a larger one fails that request
  (:class:`ResponseTooLarge`) without being read.
* Redirects are never followed (an HTTP 3xx is a :class:`RedirectError`), so the API key
  only ever goes to the origin of ``base_url``.

Connection failures, deadlines, HTTP 429 and 5xx, and bodies that are not JSON are retried with
exponential backoff and jitter, then reported as a :class:`BackendError` naming the URL, the
attempts and the last error (bodies still not JSON after the retries fail their item only, see
below). Other 4xx answers fail at once (retrying a bad request does not help).

An answer that is JSON of the wrong shape (a list, no ``choices``, a non-string content,
logprobs that are not a list of finite numbers, nesting too deep to parse, a body over the
cap) fails only its own item: ``chat`` returns "" for it (the parser's "unparseable": retry,
then LABEL_UNKNOWN) and ``yes_no_scores`` NaN (the annotation core's LABEL_UNKNOWN). Each
such failure is counted by reason in ``failures`` and logged.

``yes_no_scores`` asks for one token with ``logprobs``/``top_logprobs``; a server that rejects
or ignores them is remembered, and from then on the client asks for a one-word answer instead
and scores Yes = +1, No = -1, anything else 0 (coarser: pairs of equal answers become ties).

``chat`` sends ``top_p``, and ``top_k`` when it is on (> 0): vLLM, llama.cpp and mmotif's
server read it; a server that rejects it (HTTP 400/422 naming ``top_k``, as OpenAI's own API
does) is remembered, and from then on the client leaves it out (one warning).

At construction the client asks ``GET {base_url}/models`` (one attempt, at most 10 s): a model
name the server does not list fails at once, naming the models it has; a server without that
endpoint, or one not reachable yet, is tolerated with a warning (``check_model=False`` skips it).
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from mmotif.llm.base import BackendError, LLMBackend, Message, logsumexp

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_NO_MODELS_ENDPOINT = {404, 405, 501}  # a server without GET /models
_ERROR_BODY_BYTES = 4096  # what is read of an error answer, for its message
_STARTUP_CHECK_S = 10.0
_LOGGED_PER_REASON = 5  # item failures logged at WARNING per reason, then every 100th


class HTTPStatusError(BackendError):
    """The server answered with an HTTP error status that is not worth retrying."""

    def __init__(self, message: str, status: int, body: str):
        super().__init__(message)
        self.status = status
        self.body = body


class RedirectError(HTTPStatusError):
    """The server answered with a redirect, which the client never follows (credentials stay
    with the origin of base_url); point base_url at the final address instead."""

    def __init__(self, message: str, status: int, body: str, location: str):
        super().__init__(message, status, body)
        self.location = location


class AnswerError(BackendError):
    """The server answered, but the answer is unusable; fails only the item it belongs to.

    `reason` is a short name (the key in OpenAIHTTPBackend.failures)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class ResponseTooLarge(AnswerError):
    """The answer's body is larger than max_response_bytes."""

    def __init__(self, message: str):
        super().__init__("too_large", message)


class _Retryable(Exception):
    def __init__(self, message: str, invalid_json: bool = False):
        super().__init__(message)
        self.invalid_json = invalid_json


class DeadlineExceeded(TimeoutError):
    """One attempt took longer than deadline_s (retried like a timeout)."""


class _NoLogprobs(Exception):
    pass


class OpenAIHTTPBackend(LLMBackend):
    """Chat completions over HTTP.

    `base_url` includes the API prefix, as with the OpenAI SDK: ``http://127.0.0.1:8000/v1``.
    At most `max_concurrency` requests are in flight at once, whatever the batch size (the
    server batches them if it can). `concurrency` is the old name of `max_concurrency`.
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
        max_concurrency: int = 4,
        top_logprobs: int = 20,
        use_logprobs: bool | None = None,
        *,
        deadline_s: float | None = None,
        max_response_bytes: int = 16 * 2**20,
        check_model: bool = True,
        concurrency: int | None = None,
        top_p: float = 1.0,
        top_k: int = -1,
    ):
        if concurrency is not None:
            if max_concurrency not in (4, concurrency):
                raise ValueError("give max_concurrency or its old name concurrency, not both")
            max_concurrency = concurrency
        deadline_s = timeout_s if deadline_s is None else deadline_s
        if max_retries < 0 or max_concurrency < 1 or timeout_s <= 0 or deadline_s <= 0 or max_response_bytes < 1:
            raise ValueError("need max_retries >= 0, max_concurrency >= 1, timeout_s > 0, deadline_s > 0 "
                             "and max_response_bytes >= 1")
        self.base_url = base_url.rstrip("/")
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http:// or https:// URL with a host, got {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._ssl = ssl.create_default_context() if self._https else None
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.max_response_bytes = int(max_response_bytes)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_concurrency = self.concurrency = max_concurrency
        self.top_logprobs = top_logprobs
        self.top_p, self.top_k = top_p, top_k
        self._send_top_k = True  # False once the server rejected top_k
        # None: find out on the first yes_no_scores call; True/False: known.
        self.use_logprobs = use_logprobs
        self.failures: Counter[str] = Counter()  # items that failed alone, by reason
        self._failures_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        if check_model:
            self.check_model()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="openai-http")

    # -- HTTP --------------------------------------------------------------------------------

    def _request_once(self, method: str, path: str, body: dict | None, deadline_s: float):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=min(self.timeout_s, deadline_s),
                                               context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=min(self.timeout_s, deadline_s))
        expired = threading.Event()

        def expire() -> None:  # unblocks a read in progress: it sees end-of-file or an error
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(deadline_s, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request(method, self._prefix + path, body=data, headers=headers)
            response = conn.getresponse()
            status = response.status
            if 300 <= status < 400:
                location = response.getheader("Location") or ""
                raise RedirectError(
                    f"{method} {self.base_url}{path}: HTTP {status} redirect to {location or '(no Location)'}; "
                    "redirects are not followed (the API key stays with base_url's origin): "
                    "set base_url to the final address", status, "", location)
            if not 200 <= status < 300:
                text = self._read_body(response, _ERROR_BODY_BYTES, truncate=True).decode("utf-8", "replace")[:500]
                if status in _RETRY_STATUS:
                    raise _Retryable(f"HTTP {status}: {text}")
                raise HTTPStatusError(f"{method} {self.base_url}{path}: HTTP {status}: {text}", status, text)
            raw = self._read_body(response, self.max_response_bytes)
        except (OSError, http.client.HTTPException, ValueError):
            if expired.is_set():
                raise DeadlineExceeded(f"no complete answer within the {deadline_s:g} s deadline") from None
            raise
        finally:
            watchdog.cancel()
            conn.close()
        if expired.is_set():  # a body cut short at the deadline can look complete
            raise DeadlineExceeded(f"no complete answer within the {deadline_s:g} s deadline")
        try:
            return json.loads(raw.decode("utf-8"))
        except RecursionError:
            raise AnswerError("nested_too_deep", f"{method} {self.base_url}{path}: answer JSON is nested "
                              "too deeply to parse") from None
        except ValueError as error:  # not JSON, or not UTF-8; a truncated transfer looks the same
            raise _Retryable(f"answer is not JSON ({error}): {raw[:200]!r}", invalid_json=True) from None

    def _read_body(self, response: http.client.HTTPResponse, cap: int, truncate: bool = False) -> bytes:
        """The body, at most `cap` bytes; larger raises ResponseTooLarge (or is cut, `truncate`)."""
        if not truncate and response.length is not None and response.length > cap:
            raise ResponseTooLarge(f"{self.base_url}: the answer declares {response.length} bytes, over the "
                                   f"{cap}-byte cap (max_response_bytes)")
        chunks, total = [], 0
        while total <= cap:
            chunk = response.read(min(1 << 16, cap + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            chunks.append(chunk)
        if total > cap:
            if truncate:
                return b"".join(chunks)[:cap]
            raise ResponseTooLarge(f"{self.base_url}: the answer is over the {cap}-byte cap (max_response_bytes)")
        return b"".join(chunks)

    def request(self, method: str, path: str, body: dict | None = None, *, retries: int | None = None,
                deadline_s: float | None = None):
        """One JSON request with retries; returns the parsed JSON (any shape).

        Raises BackendError when it cannot succeed: HTTPStatusError (at once, incl.
        RedirectError), AnswerError (at once for a body too large or too deeply nested; after
        the retries for a body that is not JSON), else BackendError after the retries.
        """
        retries = self.max_retries if retries is None else retries
        deadline_s = self.deadline_s if deadline_s is None else deadline_s
        url = self.base_url + path
        start = time.monotonic()
        last, invalid_json = "", False
        for attempt in range(retries + 1):
            if attempt:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
            try:
                return self._request_once(method, path, body, deadline_s)
            except _Retryable as error:
                last, invalid_json = str(error), error.invalid_json
            except (OSError, http.client.HTTPException, ValueError) as error:
                # OSError: refused/reset connections, timeouts, the deadline, TLS errors.
                last, invalid_json = f"{type(error).__name__}: {error}", False
            log.warning("%s %s failed (attempt %d/%d): %s", method, url, attempt + 1, retries + 1, last)
        if invalid_json:
            raise AnswerError("invalid_json", f"{method} {url}: {last}")
        raise BackendError(
            f"{method} {url}: no answer after {retries + 1} attempts in "
            f"{time.monotonic() - start:.1f} s; last error: {last}"
        )

    def list_models(self, *, retries: int | None = None, deadline_s: float | None = None) -> list[str]:
        answer = self.request("GET", "/models", retries=retries, deadline_s=deadline_s)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
            raise AnswerError("bad_models", f"{self.base_url}/models: not a list of models: {_brief(answer)}")
        return [m["id"] for m in data]

    def check_model(self) -> None:
        """Fail if the server lists its models and `model` is not one of them."""
        try:
            models = self.list_models(retries=0, deadline_s=min(self.deadline_s, _STARTUP_CHECK_S))
        except HTTPStatusError as error:
            if isinstance(error, RedirectError) or error.status not in _NO_MODELS_ENDPOINT:
                raise
            log.warning("%s has no GET /models (HTTP %d): model name %r not checked",
                        self.base_url, error.status, self.model)
            return
        except AnswerError as error:
            log.warning("%s/models gave an unusable answer (%s): model name %r not checked",
                        self.base_url, error, self.model)
            return
        except BackendError as error:
            log.warning("could not reach %s to check the model name %r (%s); carrying on, requests "
                        "will retry", self.base_url, self.model, error)
            return
        if self.model not in models:
            shown = ", ".join(repr(m) for m in models[:20]) or "none"
            more = f" and {len(models) - 20} more" if len(models) > 20 else ""
            raise BackendError(f"{self.base_url}: model {self.model!r} is not served there; "
                               f"the server lists: {shown}{more}")

    # -- answers -----------------------------------------------------------------------------

    def _completion(self, messages: list[Message], **params) -> dict:
        """The first choice of a completion; AnswerError when the answer has no usable one."""
        body = {"model": self.model, "messages": messages, **{k: v for k, v in params.items() if v is not None}}
        answer = self.request("POST", "/chat/completions", body)
        if not isinstance(answer, dict):
            raise AnswerError("not_an_object", f"completion answer is {_brief(answer)}, not an object")
        choices = answer.get("choices")
        if not isinstance(choices, list) or not choices:
            error = answer.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                error = error["message"]
            raise AnswerError("no_choices", f"completion without choices: {_brief(answer)}"
                              + (f"; error: {_brief(error)}" if error is not None else ""))
        if not isinstance(choices[0], dict):
            raise AnswerError("bad_choice", f"choices[0] is {_brief(choices[0])}")
        return choices[0]

    @staticmethod
    def _content(choice: dict) -> str:
        message = choice.get("message")
        if not isinstance(message, dict):
            raise AnswerError("bad_message", f"choice message is {_brief(message)}")
        content = message.get("content")
        if content is None:  # e.g. a refusal or a tool call: no text, the parser finds nothing
            return ""
        if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text", ""), str)
                                             for p in content):  # content parts
            content = "".join(p.get("text", "") for p in content)
        if not isinstance(content, str):
            raise AnswerError("bad_content", f"message content is {_brief(content)}")
        return content.strip()

    def _item_failed(self, what: str, error: AnswerError) -> None:
        with self._failures_lock:
            self.failures[error.reason] += 1
            n = self.failures[error.reason]
        level = logging.WARNING if n <= _LOGGED_PER_REASON or n % 100 == 0 else logging.DEBUG
        log.log(level, "%s: %s item failed alone (%s, %d so far): %s", self.base_url, what, error.reason, n, error)

    def _map(self, fn, items: list) -> list:
        if len(items) <= 1 or self.max_concurrency == 1 or self._pool is None:
            return [fn(item) for item in items]
        futures = [self._pool.submit(fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:  # the batch failed: do not leave its other requests queued
                f.cancel()
            raise

    # -- chat --------------------------------------------------------------------------------

    def chat(
        self,
        messages_batch: list[list[Message]],
        max_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        top_k: int | None = None,
    ) -> list[str]:
        """One reply per conversation; "" for an item whose answer was unusable (counted)."""
        top_p, top_k = self.sampling(top_p, top_k)

        def one(messages: list[Message]) -> str:
            params = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
            try:
                if top_k > 0 and self._send_top_k:
                    try:
                        return self._content(self._completion(messages, **params, top_k=top_k))
                    except HTTPStatusError as error:
                        if error.status not in (400, 422) or "top_k" not in error.body:
                            raise
                        with self._failures_lock:
                            first, self._send_top_k = self._send_top_k, False
                        if first:
                            log.warning("%s rejects top_k (HTTP %d): sampling without it", self.base_url,
                                        error.status)
                return self._content(self._completion(messages, **params))
            except AnswerError as error:
                self._item_failed("chat", error)
                return ""

        return self._map(one, messages_batch)

    # -- yes/no scores -----------------------------------------------------------------------

    @staticmethod
    def _score_from_top(top: list) -> float | None:
        """log P(Yes) - log P(No) from top-k entries; None when neither side is listed.

        AnswerError for entries that are not {token: str, logprob: finite number}: a
        non-finite logprob makes the item's score NaN, never a finite label."""
        yes, no, listed = [], [], []
        for entry in top:
            if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
                raise AnswerError("bad_logprobs", f"top_logprobs entry is {_brief(entry)}")
            logprob = entry.get("logprob")
            if isinstance(logprob, bool) or not isinstance(logprob, (int, float)):
                raise AnswerError("bad_logprobs", f"logprob of {entry['token']!r} is {_brief(logprob)}")
            if not math.isfinite(logprob):
                raise AnswerError("non_finite_logprob", f"logprob of {entry['token']!r} is {logprob}")
            listed.append(float(logprob))
            word = entry["token"].strip().lower()
            if word == "yes":
                yes.append(float(logprob))
            elif word == "no":
                no.append(float(logprob))
        if not listed or (not yes and not no):
            return None
        # A side missing from the top-k is at most as likely as the least likely listed token.
        floor = min(listed)
        score = logsumexp(yes or [floor]) - logsumexp(no or [floor])
        if not math.isfinite(score):
            raise AnswerError("non_finite_logprob", f"score {score} from top_logprobs")
        return score

    def _logprob_score(self, messages: list[Message]) -> float:
        """Raises _NoLogprobs when the answer has none, AnswerError when it is unusable."""
        choice = self._completion(
            messages, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=self.top_logprobs
        )
        logprobs = choice.get("logprobs")
        if logprobs is None:
            raise _NoLogprobs()
        if not isinstance(logprobs, dict):
            raise AnswerError("bad_logprobs", f"logprobs is {_brief(logprobs)}")
        content = logprobs.get("content")
        if content is None or content == []:
            raise _NoLogprobs()
        if not isinstance(content, list) or not isinstance(content[0], dict):
            raise AnswerError("bad_logprobs", f"logprobs content is {_brief(content)}")
        if "top_logprobs" not in content[0]:
            raise _NoLogprobs()
        top = content[0]["top_logprobs"]
        if top is None:
            top = []
        if not isinstance(top, list):
            raise AnswerError("bad_logprobs", f"top_logprobs is {_brief(top)}")
        score = self._score_from_top(top)
        if score is None:  # neither Yes nor No among the likeliest tokens: read the answer
            return _word_score(self._content(choice))
        return score

    def _logprob_item(self, messages: list[Message]) -> float:
        try:
            return self._logprob_score(messages)
        except _NoLogprobs:
            self._item_failed("score", AnswerError("no_logprobs", "answer without logprobs"))
        except AnswerError as error:
            self._item_failed("score", error)
        return math.nan

    def _word_item(self, messages: list[Message]) -> float:
        try:
            answer = self._content(self._completion(messages, max_tokens=3, temperature=0.0))
        except AnswerError as error:
            self._item_failed("score", error)
            return math.nan
        return _word_score(answer)

    def yes_no_scores(self, prompts: list[list[Message]]) -> list[float]:
        """One score per prompt; NaN for an item whose answer was unusable (counted)."""
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
            except AnswerError as error:  # unusable, but says nothing about logprobs support
                self._item_failed("score", error)
                return [math.nan, *self._map(self._logprob_item, prompts[1:])]
            else:
                return [first, *self._map(self._logprob_item, prompts[1:])]
        return self._map(self._word_item, prompts)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _brief(value) -> str:
    """A short description of a JSON value that never recurses into it."""
    if isinstance(value, dict):
        keys = list(value)[:8]
        return f"an object with keys {keys}" + (" ..." if len(value) > 8 else "")
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, str):
        return f"a string {value[:80]!r}"
    return repr(value) if value is None or isinstance(value, (bool, int, float)) else type(value).__name__


def _word_score(answer: str) -> float:
    words = answer.strip().lower().split()
    word = words[0].strip(".,!:;\"'*") if words else ""
    return {"yes": 1.0, "no": -1.0}.get(word, 0.0)
