"""The base of this project's pure-ASGI middleware (HTTP requests go to ``handle``; anything else,
lifespan and websockets, passes through untouched), and the request-id middleware."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apps.http.logging import REQUEST_ID_HEADER, accept_request_id, bound_request_id, current_request_id


class HTTPMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One HTTP request; call ``self.app`` to pass it on."""
        raise NotImplementedError


class TrackedSend:
    """``send`` that remembers whether the response has started: past that, a middleware can no
    longer answer with an error of its own and must let the server drop the connection."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


class RequestIdMiddleware(HTTPMiddleware):
    """Give each request an id: the client's ``X-Request-ID`` when it is a plain token, else a new
    one. It is bound for the request (every log line and every Celery task sent while serving it
    carries it, see ``apps.http.logging``), kept in ``request.state.request_id`` and answered in the
    response's ``X-Request-ID``. Added outermost, so every answer carries it, errors included; an id
    already bound by an outer layer (this middleware twice, a test's wrapper) is kept."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = current_request_id()
        if request_id is None:
            sent = next((v for k, v in scope.get("headers", ()) if k == REQUEST_ID_HEADER.encode()), None)
            request_id = accept_request_id(sent.decode("latin-1") if sent is not None else None)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != header[0]]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        with bound_request_id(request_id):
            await self.app(scope, receive, send_with_id)
