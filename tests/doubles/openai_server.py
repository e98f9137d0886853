"""A stand-in for a vLLM OpenAI server on loopback, for the remote engine's unit tests: it lists the
models it is given (vLLM's /v1/models shape) and answers each POST /v1/completions with what the
test's handler returns, recording every request body."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# one answer: a status, a JSON body (or raw bytes), headers; a list of dicts is sent as SSE events
Answer = tuple[int, Any, dict[str, str]]
Handler = Callable[[dict[str, Any]], Answer]

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def vllm_models(*adapters: str, base: str = BASE_ID, root: str = "/models/smollm2-135m-instruct") -> dict[str, Any]:
    """/v1/models as vLLM lists a base model served with ``--lora-modules name=path ...``."""
    cards = [{"id": base, "object": "model", "created": 1, "owned_by": "vllm", "root": root, "parent": None}]
    cards += [
        {"id": name, "object": "model", "created": 2, "owned_by": "vllm", "root": f"/adapters/{name}", "parent": base}
        for name in adapters
    ]
    return {"object": "list", "data": cards}


@dataclass
class FakeOpenAIServer:
    models: dict[str, Any] = field(default_factory=lambda: vllm_models("sentiment"))
    handler: Handler = field(default=lambda body: (500, {"error": {"message": "no handler"}}, {}))
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def fake_openai_server(server: FakeOpenAIServer | None = None) -> Iterator[FakeOpenAIServer]:
    """Serve ``server`` on a free loopback port for the duration of the block."""
    state = server or FakeOpenAIServer()

    class Handle(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
            if isinstance(body, list):  # server-sent events
                self.send_response(status)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for event in body:
                    data = event if isinstance(event, str) else json.dumps(event)
                    self.wfile.write(f"data: {data}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                return
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._send(200, state.models, {})
            else:
                self._send(404, {"error": {"message": "not found"}}, {})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            state.requests.append(body)
            if self.path != "/v1/completions":
                self._send(404, {"error": {"message": "not found"}}, {})
                return
            self._send(*state.handler(body))

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handle)
    httpd.daemon_threads = True
    state.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
