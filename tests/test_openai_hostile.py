"""The OpenAI-compatible HTTP client against hostile or broken servers, all in-process on
127.0.0.1 (no model): odd JSON, non-finite logprobs, slow drips, huge bodies, redirects to
another origin, a wrong model name; plus mmotif's own server around a fake model, and the
concurrency limit. Each of these failed (or hung, or leaked the key) with the urllib client.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fake_llm import FakeModel

from mmotif.annotators.annotate import AnnotationStats, annotate_pairs
from mmotif.contract import LABEL_UNKNOWN, Caption, CaptionPair
from mmotif.llm.base import BackendError
from mmotif.llm.openai_http import (
    AnswerError,
    HTTPStatusError,
    OpenAIHTTPBackend,
    RedirectError,
    ResponseTooLarge,
)
from mmotif.llm.openai_server import serve

QUESTION = [{"role": "user", "content": "Is this good? case=ok"}]
SKILLS = {"s": "Progress means going deeper."}
MODELS = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()


# ------------------------------------------------------------------ helpers
@contextlib.contextmanager
def http_server(handler_class):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


class Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_bytes(self, status: int, payload: bytes, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


def completion(content="Answer: best_description: 1", logprobs=None) -> dict:
    return {"id": "c", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": logprobs}]}


def top(entries: str) -> bytes:
    """A completion whose first token's top_logprobs is the raw JSON `entries` (NaN allowed)."""
    return (b'{"choices": [{"message": {"content": "Yes"}, "logprobs": {"content": [{"token": "Yes", '
            b'"logprob": -0.1, "top_logprobs": ' + entries.encode() + b'}]}}]}')


DEEP = b"[" * 100_000 + b"]" * 100_000


def case_server(cases: dict[str, bytes]):
    """Answers each completion with cases[name] for the `case=name` found in the request."""
    class Handler(Quiet):
        def do_GET(self):  # noqa: N802
            self.send_bytes(200, MODELS)

        def do_POST(self):  # noqa: N802
            body = self.read_body().decode()
            name = max((n for n in cases if f"case={n}" in body), key=len)
            self.send_bytes(200, cases[name])

    return http_server(Handler)


def client(url: str, **kw) -> OpenAIHTTPBackend:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout_s", 5.0)
    return OpenAIHTTPBackend(url, "m", **kw)


# ------------------------------------------------------------------ B1: odd JSON
CHAT_CASES = {
    "ok": json.dumps(completion()).encode(),
    "list": b"[1, 2, 3]",
    "string": b'"hello"',
    "no_choices": b'{"id": "x", "object": "chat.completion"}',
    "empty_choices": b'{"choices": []}',
    "choice_str": b'{"choices": ["Answer: 1"]}',
    "message_null": b'{"choices": [{"message": null}]}',
    "content_int": b'{"choices": [{"message": {"content": 42}}]}',
    "content_deep": b'{"choices": [{"message": {"content": ' + b"[" * 500 + b"]" * 500 + b"}}]}",
    "error_200": b'{"error": {"message": "overloaded", "type": "server_error"}}',
    "deep": DEEP,
}


def test_odd_json_fails_only_its_own_chat_item(caplog):
    with case_server(CHAT_CASES) as url:
        c = client(url)
        names = list(CHAT_CASES)
        with caplog.at_level(logging.WARNING, logger="mmotif.llm.openai_http"):
            answers = c.chat([[{"role": "user", "content": f"case={n}"}] for n in names])
        assert answers == ["Answer: best_description: 1" if n == "ok" else "" for n in names]
        assert sum(c.failures.values()) == len(names) - 1
        assert c.failures["nested_too_deep"] == 1 and c.failures["no_choices"] == 3
        assert {"not_an_object", "bad_choice", "bad_message", "bad_content"} <= set(c.failures)
        assert "item failed alone" in caplog.text and "nested_too_deep" in caplog.text
        assert "error: a string 'overloaded'" in caplog.text
        # the request level says what is wrong instead of an AttributeError/RecursionError
        with pytest.raises(AnswerError, match="nested too deeply"):
            c.request("POST", "/chat/completions", {"messages": [{"role": "user", "content": "case=deep"}]})
        c.close()


def test_odd_json_pairwise_annotation_labels_unknown_and_keeps_the_batch():
    cases = {"ok": json.dumps(completion("best_description: 2")).encode(), "list": b"[]", "deep": DEEP}
    with case_server(cases) as url:
        c = client(url)
        pairs = [CaptionPair("s", Caption(f"case={n} first", "m", 0), Caption("second", "m", 0))
                 for n in ("ok", "list", "deep")]
        stats = AnnotationStats()
        labels = [p.label for p in annotate_pairs(c, pairs, SKILLS, "pairwise", stats=stats)]
        assert labels == [1, LABEL_UNKNOWN, LABEL_UNKNOWN]
        assert stats.parse_failures == 2 and stats.retries_failed == 2  # each was asked again once
        c.close()


# ------------------------------------------------------------------ B1 + B5: logprobs
SCORE_CASES = {
    "ok": top('[{"token": "Yes", "logprob": -0.1}, {"token": "No", "logprob": -2.5}]'),
    "nan": top('[{"token": "Yes", "logprob": NaN}, {"token": "No", "logprob": -1.0}]'),
    "inf": top('[{"token": "Yes", "logprob": -0.5}, {"token": "No", "logprob": Infinity}]'),
    "neginf": top('[{"token": "Yes", "logprob": -0.5}, {"token": "No", "logprob": -Infinity}]'),
    "overflow": top('[{"token": "Yes", "logprob": -0.5}, {"token": "No", "logprob": -1e999}]'),
    "other_nan": top('[{"token": "Yes", "logprob": -0.5}, {"token": "Maybe", "logprob": NaN}]'),
    "null_lp": top('[{"token": "Yes", "logprob": null}, {"token": "No", "logprob": -1.0}]'),
    "str_lp": top('[{"token": "Yes", "logprob": "-0.1"}, {"token": "No", "logprob": -1.0}]'),
    "bool_lp": top('[{"token": "Yes", "logprob": true}, {"token": "No", "logprob": -1.0}]'),
    "entry_list": top('[["Yes", -0.1], ["No", -1.0]]'),
    "top_str": top('"Yes"'),
    "token_int": top('[{"token": 1, "logprob": -0.1}]'),
    "logprobs_null": json.dumps(completion("Yes", None)).encode(),
    "logprobs_list": json.dumps(completion("Yes", [1, 2])).encode(),
    "content_dict": json.dumps(completion("Yes", {"content": {"a": 1}})).encode(),
    "list": b"[1]",
    "deep": DEEP,
}


def test_odd_logprobs_give_nan_scores_never_finite_labels():
    with case_server(SCORE_CASES) as url:
        c = client(url, use_logprobs=True)
        names = list(SCORE_CASES)
        scores = c.yes_no_scores([[{"role": "user", "content": f"case={n}"}] for n in names])
        got = dict(zip(names, scores))
        assert got["ok"] == pytest.approx(2.4)
        for n in names[1:]:
            assert math.isnan(got[n]), (n, got[n])
        assert c.failures["non_finite_logprob"] == 5 and c.failures["no_logprobs"] == 1
        assert sum(c.failures.values()) == len(names) - 1
        c.close()


def test_nan_scores_become_unknown_labels_in_pointwise_annotation():
    with case_server(SCORE_CASES) as url:
        c = client(url, use_logprobs=True)
        pairs = [CaptionPair("s", Caption(f"case={a} x", "m", 0), Caption(f"case={b} y", "m", 0))
                 for a, b in [("ok", "ok"), ("ok", "nan"), ("inf", "ok"), ("deep", "list")]]
        labels = [p.label for p in annotate_pairs(c, pairs, SKILLS, "pointwise", score_cache={})]
        assert labels[0] != LABEL_UNKNOWN and labels[1:] == [LABEL_UNKNOWN] * 3
        c.close()


def test_unusable_first_answer_does_not_decide_logprob_support():
    with case_server(SCORE_CASES) as url:
        c = client(url)  # use_logprobs unknown: the first prompt probes
        scores = c.yes_no_scores([[{"role": "user", "content": "case=deep"}],
                                  [{"role": "user", "content": "case=ok"}]])
        assert math.isnan(scores[0]) and scores[1] == pytest.approx(2.4)
        assert c.use_logprobs is None
        assert c.yes_no_scores([[{"role": "user", "content": "case=ok"}]]) == [pytest.approx(2.4)]
        assert c.use_logprobs is True
        c.close()


# ------------------------------------------------------------------ B2: total deadline
def drip_server(where: str, step_s: float = 0.1):
    """A raw server that drips its answer one byte per `step_s` (never long enough for a
    socket read timeout): in the status line/headers, or in the body."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    body = json.dumps(completion("Answer")).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    state = {"connections": 0, "sent": 0}

    def one(conn):
        with conn:
            try:
                conn.recv(65536)
                if where == "headers":
                    drip, rest = head, body
                else:
                    conn.sendall(head)
                    drip, rest = body, b""
                for i in range(len(drip)):
                    conn.sendall(drip[i:i + 1])
                    state["sent"] += 1
                    time.sleep(step_s)
                conn.sendall(rest)
            except OSError:
                pass

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            state["connections"] += 1
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}/v1", state


@pytest.mark.parametrize("where", ["headers", "body"])
def test_slow_drip_is_cut_at_the_total_deadline(where):
    listener, url, state = drip_server(where)
    try:
        c = client(url, timeout_s=1.0, max_retries=1, backoff_s=0.05, check_model=False)
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="deadline") as error:
            c.chat([QUESTION])
        elapsed = time.monotonic() - t0
        assert 1.9 < elapsed < 3.5, elapsed  # two attempts of 1 s each, not the whole drip
        assert "no answer after 2 attempts" in str(error.value) and state["connections"] == 2
        # deadline_s apart from the per-read timeout
        c2 = client(url, timeout_s=30.0, deadline_s=0.5, check_model=False)
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="0.5 s deadline"):
            c2.chat([QUESTION])
        assert time.monotonic() - t0 < 1.5
    finally:
        listener.close()


def test_model_check_against_a_hanging_server_is_bounded(caplog):
    listener, url, _ = drip_server("headers", step_s=1.0)
    try:
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="mmotif.llm.openai_http"):
            c = client(url, timeout_s=0.8)
        assert time.monotonic() - t0 < 2.0
        assert "could not reach" in caplog.text and "deadline" in caplog.text
        c.close()
    finally:
        listener.close()


# ------------------------------------------------------------------ B3: body size cap
def big_server(declare: bool, total: int = 300 * 2**20):
    state = {"sent": 0}

    class Handler(Quiet):
        def do_GET(self):  # noqa: N802
            self.send_bytes(200, MODELS)

        def do_POST(self):  # noqa: N802
            self.read_body()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if declare:
                self.send_header("Content-Length", str(total))
            else:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b'{"pad": "' + b"x" * (1 << 16)
            try:
                while state["sent"] < total:
                    if declare:
                        self.wfile.write(chunk)
                    else:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    state["sent"] += len(chunk)
            except OSError:
                pass
            self.close_connection = True

    return http_server(Handler), state


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "chunked"])
def test_huge_body_is_refused_without_reading_it(declare):
    server, state = big_server(declare)
    with server as url:
        c = client(url, max_response_bytes=2**20)
        t0 = time.monotonic()
        with pytest.raises(ResponseTooLarge, match="max_response_bytes"):
            c.request("POST", "/chat/completions", {"messages": []})
        assert c.chat([QUESTION]) == [""] and c.failures["too_large"] == 1  # chat: that item fails
        assert time.monotonic() - t0 < 5
        assert state["sent"] < 64 * 2**20  # stopped long before 300 MB
        c.close()
    assert OpenAIHTTPBackend("http://127.0.0.1:1/v1", "m", check_model=False).max_response_bytes == 16 * 2**20


# ------------------------------------------------------------------ B4: redirects
def test_redirect_to_another_origin_never_gets_the_api_key():
    seen = []

    class Elsewhere(Quiet):
        def do_GET(self):  # noqa: N802
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_bytes(200, MODELS)

        def do_POST(self):  # noqa: N802
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_bytes(200, json.dumps(completion()).encode())

    with http_server(Elsewhere) as other:
        class Redirecting(Quiet):
            def do_GET(self):  # noqa: N802
                self.send_bytes(302, b"", {"Location": other + "/models"})

            def do_POST(self):  # noqa: N802
                self.read_body()
                self.send_bytes(303, b"", {"Location": other + "/chat/completions"})

        with http_server(Redirecting) as url:
            with pytest.raises(RedirectError, match="redirect to http://127.0.0.1:.*not followed"):
                OpenAIHTTPBackend(url, "m", api_key="sk-secret")  # the start-up model check
            c = OpenAIHTTPBackend(url, "m", api_key="sk-secret", check_model=False, max_retries=3)
            with pytest.raises(RedirectError) as error:
                c.list_models()
            assert error.value.status == 302 and error.value.location == other + "/models"
            t0 = time.monotonic()
            with pytest.raises(HTTPStatusError, match="HTTP 303"):
                c.chat([QUESTION])
            assert time.monotonic() - t0 < 1  # not retried
            c.close()
    assert seen == []  # the other origin saw no request at all, let alone the key


# ------------------------------------------------------------------ B6: concurrency, model check
def test_max_concurrency_bounds_requests_in_flight():
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    class Slow(Quiet):
        def do_GET(self):  # noqa: N802
            self.send_bytes(200, MODELS)

        def do_POST(self):  # noqa: N802
            self.read_body()
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            time.sleep(0.2)
            with lock:
                state["now"] -= 1
            self.send_bytes(200, json.dumps(completion("ok")).encode())

    with http_server(Slow) as url:
        for limit, n in [(3, 9), (8, 16), (1, 3)]:
            state["max"] = 0
            c = client(url, max_concurrency=limit)
            t0 = time.monotonic()
            assert c.chat([QUESTION] * n) == ["ok"] * n
            elapsed = time.monotonic() - t0
            assert state["max"] == limit, (limit, state)
            assert elapsed >= 0.2 * n / limit - 0.05
            c.close()
        assert client(url, concurrency=2).max_concurrency == 2  # the old name still works
    with pytest.raises(ValueError):
        OpenAIHTTPBackend("http://127.0.0.1:1/v1", "m", max_concurrency=0, check_model=False)


def test_wrong_model_name_fails_at_construction_listing_the_servers_models(caplog):
    class Models(Quiet):
        def do_GET(self):  # noqa: N802
            self.send_bytes(200, json.dumps({"data": [{"id": "alpha"}, {"id": "beta"}]}).encode())

    with http_server(Models) as url:
        with pytest.raises(BackendError, match=r"model 'gamma' is not served.*'alpha', 'beta'"):
            OpenAIHTTPBackend(url, "gamma")
        OpenAIHTTPBackend(url, "beta").close()

    class NoModels(Quiet):  # /v1/models answers 404; POST works
        def do_GET(self):  # noqa: N802
            self.send_bytes(404, b'{"error": "no route"}')

        def do_POST(self):  # noqa: N802
            self.read_body()
            self.send_bytes(200, json.dumps(completion("fine")).encode())

    class Odd(Quiet):  # /v1/models answers something that is not a model list
        def do_GET(self):  # noqa: N802
            self.send_bytes(200, b"[1, 2]")

    with caplog.at_level(logging.WARNING, logger="mmotif.llm.openai_http"):
        with http_server(NoModels) as url:
            c = OpenAIHTTPBackend(url, "anything")
            assert c.chat([QUESTION]) == ["fine"]
            c.close()
        assert "has no GET /models (HTTP 404)" in caplog.text
        with http_server(Odd) as url:
            OpenAIHTTPBackend(url, "anything").close()
        assert "unusable answer" in caplog.text
        with socket.socket() as s:  # nobody listens: tolerated (the server may start later)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        t0 = time.monotonic()
        OpenAIHTTPBackend(f"http://127.0.0.1:{port}/v1", "m").close()
        assert time.monotonic() - t0 < 2 and "could not reach" in caplog.text

    class Unauthorized(Quiet):
        def do_GET(self):  # noqa: N802
            self.send_bytes(401, b'{"error": {"message": "bad key"}}')

    with http_server(Unauthorized) as url:
        with pytest.raises(HTTPStatusError, match="HTTP 401"):
            OpenAIHTTPBackend(url, "m", api_key="wrong")


# ------------------------------------------------------------------ mmotif's own server
def test_a_server_that_rejects_top_k_is_asked_without_it(caplog):
    """OpenAI's own API refuses top_k (HTTP 400): the client drops it, once, with one warning."""
    bodies = []

    class Handler(Quiet):
        def do_GET(self):  # noqa: N802
            self.send_bytes(200, MODELS)

        def do_POST(self):  # noqa: N802
            bodies.append(json.loads(self.read_body()))
            if "top_k" in bodies[-1]:
                self.send_bytes(400, b'{"error": {"message": "Unrecognized request argument supplied: top_k"}}')
            else:
                self.send_bytes(200, json.dumps(completion("Yes")).encode())

    with http_server(Handler) as url:
        c = client(url, top_k=40)
        with caplog.at_level(logging.WARNING, logger="mmotif.llm.openai_http"):
            assert c.chat([QUESTION, QUESTION], temperature=0.7) == ["Yes", "Yes"]
            assert c.chat([QUESTION], temperature=0.7) == ["Yes"]
        c.close()
    assert sum("top_k" in b for b in bodies) in (1, 2) and "top_k" not in bodies[-1] and len(bodies) >= 4
    assert caplog.text.count("rejects top_k") == 1


def test_local_server_in_process_with_a_fake_model():
    model = FakeModel()
    server = serve(model)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        c = OpenAIHTTPBackend(url, "fake-model", max_concurrency=2)
        assert c.list_models() == ["fake-model"]
        assert c.chat([QUESTION, QUESTION]) == ["Answer: best_description: 2"] * 2
        # the client's sampling reaches the model behind the server (top_k only when on)
        model.sampled.clear()
        assert OpenAIHTTPBackend(url, "fake-model", top_p=0.9, top_k=7).chat([QUESTION], temperature=0.5)
        assert c.chat([QUESTION], temperature=0.5)
        assert model.sampled == [(0.5, 0.9, 7), (0.5, 1.0, -1)]
        assert c.yes_no_scores([QUESTION] * 3) == [pytest.approx(1.7)] * 3 and c.use_logprobs is True
        assert not c.failures
        c.close()
        with pytest.raises(BackendError, match="'fake-model'"):
            OpenAIHTTPBackend(url, "smollm2-135m")
    finally:
        server.shutdown()
        server.server_close()
