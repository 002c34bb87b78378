"""The OpenAI-compatible HTTP client against a real local server (a real model behind a real
socket: mmotif's own server around the embedded SmolLM2-135M), plus failure cases: a server
that disappears, one that never answers, one that fails for a while, and bad requests.
"""

from __future__ import annotations

import json
import math
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmotif.annotators.annotate import AnnotationStats, annotate_pairs
from mmotif.annotators.prompts import pointwise_messages
from mmotif.contract import Caption, CaptionPair
from mmotif.llm.base import BackendError
from mmotif.llm.embedded import EmbeddedBackend
from mmotif.llm.openai_http import HTTPStatusError, OpenAIHTTPBackend
from mmotif.llm.weights import ensure_model

MODEL = "smollm2-135m"
SKILLS = {"descender": "Progress means going deeper into the dungeon; staying on the same level is bad."}
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def _start_server(timeout_s: float = 300) -> tuple[subprocess.Popen, str]:
    ensure_model(MODEL)  # prepared here, so a first run's download is not inside the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmotif.llm.openai_server", "--model", MODEL,
         "--port", "0", "--threads", "1", "--dtype", "float32"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("{"):
                return proc, json.loads(line)["url"]
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
    proc.kill()
    raise RuntimeError("server did not start in time")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def server():
    proc, url = _start_server()
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def local():
    """The same model in-process, to check that HTTP returns what the model generates."""
    b = EmbeddedBackend(MODEL, dtype="float32", batch_size=4)
    yield b
    b.close()


def _caption(message: str, depth: str = "did not change") -> Caption:
    text = (f'The earlier message was "" and the current message is "{message}"\n'
            f"The dungeon level {depth}\nThe gold did not change\nThe HP did not change\n"
            "The experience level did not change\nThe hunger state did not change")
    return Caption(text=text, message=message, depth_change=1 if "down" in depth else 0)


def test_lists_the_served_model(server):
    client = OpenAIHTTPBackend(server, MODEL)
    assert client.list_models() == [MODEL]


def test_chat_over_http_returns_the_models_text(server, local):
    client = OpenAIHTTPBackend(server, MODEL, max_concurrency=2)
    conversations = [QUESTION, [{"role": "user", "content": "Name one colour."}]]
    remote = client.chat(conversations, max_tokens=12, temperature=0.0)
    assert remote == [local.chat([c], max_tokens=12)[0] for c in conversations]
    assert "Paris" in remote[0]
    client.close()


def test_yes_no_scores_use_logprobs_over_http(server, local):
    client = OpenAIHTTPBackend(server, MODEL)
    prompts = [pointwise_messages(SKILLS["descender"], _caption("You descend the stairs.", "went down from 1 to 2").text),
               pointwise_messages(SKILLS["descender"], _caption("You kill the newt!").text)]
    remote = client.yes_no_scores(prompts)
    assert client.use_logprobs is True
    assert all(math.isfinite(s) for s in remote)
    # Same model, same numbers (both Yes and No variants are among the top 20 tokens here).
    assert remote == pytest.approx(local.yes_no_scores(prompts), abs=0.05)


def test_word_answers_when_logprobs_are_off(server):
    client = OpenAIHTTPBackend(server, MODEL, use_logprobs=False)
    scores = client.yes_no_scores([[{"role": "user", "content": "Is water wet? Answer Yes or No."}]])
    assert scores[0] in (-1.0, 0.0, 1.0)


def test_annotate_through_http(server):
    client = OpenAIHTTPBackend(server, MODEL)
    pairs = [CaptionPair("descender", _caption("You descend the stairs.", "went down from 1 to 2"),
                         _caption("You kill the newt!"))]
    stats = AnnotationStats()
    [pref] = annotate_pairs(client, pairs, SKILLS, "pointwise", score_cache={}, stats=stats)
    assert (pref.backend, pref.model) == ("openai", MODEL)
    assert pref.label in (0, 1, 2) and stats.llm_calls == 2


def test_bad_request_fails_at_once_without_retries(server):
    client = OpenAIHTTPBackend(server, MODEL, max_retries=5, backoff_s=2.0)
    t0 = time.monotonic()
    with pytest.raises(HTTPStatusError) as error:
        client.request("POST", "/chat/completions", {"model": MODEL, "messages": "not a list"})
    assert error.value.status == 400
    assert time.monotonic() - t0 < 2.0  # no backoff sleeps


def test_server_that_disappears_gives_a_clear_error_after_retries():
    proc, url = _start_server()
    try:
        client = OpenAIHTTPBackend(url, MODEL, timeout_s=5, max_retries=2, backoff_s=0.2)
        assert client.chat([QUESTION], max_tokens=4)[0]
    finally:
        proc.kill()
        proc.wait(10)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"no answer after 3 attempts") as error:
        client.chat([QUESTION], max_tokens=4)
    assert url in str(error.value)
    assert time.monotonic() - t0 < 10


def test_server_that_never_answers_times_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []

    def accept_and_hang():
        listener.settimeout(15)
        try:
            while True:
                conn, _ = listener.accept()
                accepted.append(conn)  # keep it open, never reply
        except OSError:
            pass

    threading.Thread(target=accept_and_hang, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    # check_model=False: no start-up GET /models, so only the two chat attempts connect
    client = OpenAIHTTPBackend(url, MODEL, timeout_s=1.0, max_retries=1, backoff_s=0.1, check_model=False)
    t0 = time.monotonic()
    try:
        with pytest.raises(BackendError, match="no answer after 2 attempts"):
            client.chat([QUESTION], max_tokens=4)
        assert time.monotonic() - t0 < 6
        assert len(accepted) == 2
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


def test_retries_through_temporary_failures(server):
    """A proxy that answers 503 twice, then forwards to the real server: the client recovers."""
    calls = []

    class Flaky(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            calls.append(time.monotonic())
            if len(calls) <= 2:
                payload, status = b'{"error": {"message": "busy"}}', 503
            else:
                request = urllib.request.Request(server + "/chat/completions", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as response:
                    payload, status = response.read(), 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        client = OpenAIHTTPBackend(f"http://127.0.0.1:{proxy.server_address[1]}/v1", MODEL,
                                   max_retries=3, backoff_s=0.1)
        [text] = client.chat([QUESTION], max_tokens=8)
        assert "Paris" in text
        assert len(calls) == 3
        assert calls[1] - calls[0] >= 0.04 and calls[2] - calls[1] >= 0.04  # backed off
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_api_key_is_sent_as_bearer_token():
    seen = []

    class Echo(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            payload = b'{"object": "list", "data": [{"id": "m"}]}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = OpenAIHTTPBackend(f"http://127.0.0.1:{srv.server_address[1]}/v1", "m", api_key="sk-test")
        assert client.list_models() == ["m"]
        assert seen == ["Bearer sk-test"] * 2  # the start-up model check, then list_models
    finally:
        srv.shutdown()
        srv.server_close()


def test_env_api_key_is_used(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert OpenAIHTTPBackend("http://127.0.0.1:1/v1", "m").api_key == "sk-env"
