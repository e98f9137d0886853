"""Small real servers on loopback for the sentiment tests and benchmark: a feed server, a webhook receiver that
checks signatures, an SMTP sink (aiosmtpd) and an embedded Redis. Nothing here is used in production
paths; they stand in for the outside world the monitor talks to."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from apps.sentiment.delivery import verify_signature
from tests.doubles.redis import free_port

# Seven clearly bad headlines about one watched company (Globex, GLBX): enough for an entity alert.
BURST = [
    "Globex shares plunge 18% after regulator opens accounting fraud probe",
    "Globex posts a record quarterly loss and scraps its dividend",
    "Investors file class action lawsuit against Globex over misstated revenue",
    "Moody's downgrades Globex debt to junk, citing weak controls",
    "Globex shares crash to a record low as the fraud probe widens",
    "Globex suffers worst trading day in a decade as fraud fears spread",
    "Globex warns of bankruptcy risk after profits collapse",
]


class _Server:
    """A ThreadingHTTPServer on a thread, restartable on the same port (to take a receiver down and back)."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> _Server:
        outer = self

        class Handler(self.handler):  # type: ignore[name-defined]
            server_obj = outer

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> _Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _FeedHandler(BaseHTTPRequestHandler):
    server_obj: FeedServer

    def do_GET(self) -> None:
        feed = self.server_obj
        feed.requests.append((self.path, dict(self.headers)))
        if self.path in feed.hang:
            time.sleep(feed.hang[self.path])
            return
        if self.path not in feed.feeds:
            self.send_error(404)
            return
        body, content_type = feed.feeds[self.path]
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        self.wfile.write(body)


class FeedServer(_Server):
    """Serves ``feeds[path] = (bytes, content type)``; a path in ``hang`` sleeps that long, sending nothing."""

    handler = _FeedHandler

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.feeds: dict[str, tuple[bytes, str]] = {}
        self.hang: dict[str, float] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []

    def set(self, path: str, body: bytes, content_type: str = "application/rss+xml; charset=utf-8") -> str:
        self.feeds[path] = (body, content_type)
        return self.url + path


class _WebhookHandler(BaseHTTPRequestHandler):
    server_obj: WebhookReceiver

    def do_POST(self) -> None:
        receiver = self.server_obj
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ok = verify_signature(
            receiver.secret,
            self.headers.get("X-Domainllm-Timestamp", ""),
            body,
            self.headers.get("X-Domainllm-Signature", ""),
        )
        if not ok:
            receiver.refused += 1
            self.send_error(401, "bad signature")
            return
        receiver.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()


class WebhookReceiver(_Server):
    """Accepts POSTs whose HMAC signature checks out (``received``); refuses the others with 401."""

    handler = _WebhookHandler

    def __init__(self, secret: str, port: int | None = None) -> None:
        super().__init__(port)
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.refused = 0


@dataclass
class SmtpSink:
    """A real SMTP server (aiosmtpd) on loopback that keeps the messages it receives."""

    port: int = field(default_factory=free_port)
    messages: list[Message] = field(default_factory=list)

    def start(self) -> SmtpSink:
        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                sink.messages.append(message_from_bytes(envelope.content))
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()
