"""A minimal OpenAI-compatible HTTP server around the embedded backend (standard library only).

It lets several processes share one CPU model, and it gives the HTTP client a real server to
be tested against. Endpoints: ``GET /v1/models``, ``GET /health``,
``POST /v1/chat/completions`` (non-streaming, n=1; ``logprobs``/``top_logprobs`` are filled
in for the first generated token only). Requests are served one at a time.

    python -m mmotif.llm.openai_server --model smollm2-135m --port 8000

prints one JSON line ``{"url": "http://127.0.0.1:PORT/v1", ...}`` once it is listening.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer



def _completion_handler(backend, lock: threading.Lock):
    served_model = backend.model

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: one line per request is too much
            pass

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})

        def do_GET(self):  # noqa: N802 (http.server naming)
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [
                    {"id": served_model, "object": "model", "created": 0, "owned_by": "mmotif"}]})
            elif self.path.rstrip("/") == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):  # noqa: N802
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._error(404, f"no route {self.path}")
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                messages = body["messages"]
                if not isinstance(messages, list) or not all(
                    isinstance(m, dict) and "role" in m and "content" in m for m in messages
                ):
                    raise ValueError("messages must be a list of {role, content}")
                if body.get("stream"):
                    raise ValueError("stream is not supported")
                if int(body.get("n") or 1) != 1:
                    raise ValueError("only n=1 is supported")
                max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 256)
                temperature = float(body["temperature"]) if body.get("temperature") is not None else 1.0
                top_p = float(body.get("top_p") or 1.0)
                top_k = -1 if body.get("top_k") is None else int(body["top_k"])
                seed = None if body.get("seed") is None else int(body["seed"])
                want_logprobs = bool(body.get("logprobs"))
                k = int(body.get("top_logprobs") or 0)
                if max_tokens < 1 or temperature < 0 or not 0 < top_p <= 1 or top_k < -1 or not 0 <= k <= 20:
                    raise ValueError("need max_tokens >= 1, temperature >= 0, 0 < top_p <= 1, top_k >= -1, "
                                     "0 <= top_logprobs <= 20")
            except (ValueError, KeyError, TypeError) as error:
                self._error(400, f"bad request: {error}")
                return
            try:
                with lock:
                    top = backend.first_token_logprobs([messages], k=max(k, 1))[0] if want_logprobs else None
                    if top and max_tokens == 1 and temperature == 0:
                        text = top[0][0].strip()  # the greedy token: no second pass needed
                    else:
                        text = backend.chat([messages], max_tokens=max_tokens, temperature=temperature,
                                            top_p=top_p, top_k=top_k, seed=seed)[0]
            except Exception as error:  # the model failed: tell the client, keep serving
                self._send(500, {"error": {"message": f"{type(error).__name__}: {error}", "type": "server_error"}})
                return
            n_out = len(backend.tokenizer.encode(text, add_special_tokens=False))
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length" if n_out >= max_tokens else "stop",
                "logprobs": None,
            }
            if top is not None:
                first_token, first_logprob = top[0]
                choice["logprobs"] = {"content": [{
                    "token": first_token, "logprob": first_logprob,
                    "top_logprobs": [{"token": t, "logprob": v} for t, v in top[:k]],
                }]}
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": served_model,
                "choices": [choice],
                "usage": {"completion_tokens": n_out},
            })

    return Handler


def serve(backend, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A started server (in a daemon thread) for `backend`; `server.server_address` has the port."""
    server = ThreadingHTTPServer((host, port), _completion_handler(backend, threading.Lock()))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="openai-server", daemon=True).start()
    return server


def run_server(model: str, cache_dir=None, threads: int | None = None, dtype: str = "bfloat16",
               host: str = "127.0.0.1", port: int = 8000) -> int:
    """`mmotif serve-llm`: serve an embedded model until interrupted; prints its URL as JSON."""
    # This process is ours: let idle OpenMP threads sleep rather than spin (torch is not
    # imported yet), which keeps multi-threaded inference fast on shared cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from mmotif.llm.embedded import EmbeddedBackend

    backend = EmbeddedBackend(model, cache_dir=cache_dir, num_threads=threads, dtype=dtype)
    server = serve(backend, host, port)
    host, port = server.server_address[:2]
    print(json.dumps({"url": f"http://{host}:{port}/v1", "model": backend.model}), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m mmotif.llm.openai_server ARGS` is `mmotif serve-llm ARGS`."""
    from mmotif.cli import main as cli_main

    return cli_main(["serve-llm", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
