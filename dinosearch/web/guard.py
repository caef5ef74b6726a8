"""Request guards that sit in front of every route: the Host check, the body cap and response headers.

Pure ASGI, so the body cap counts the bytes as uvicorn hands them over, whatever the framing
(Content-Length or chunked), before anything parses them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

from ..settings import normalise_host

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Sent with every response unless a route set its own. CORP keeps other sites from embedding our
# images (a page on the web could otherwise <img> them off 127.0.0.1); no CORS headers are ever added.
DEFAULT_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class BodyTooLarge(HTTPException):
    """Raised from inside `receive` once the body passes the cap.

    An HTTPException, so FastAPI's body parsing re-raises it as is instead of turning it into a 400.
    """

    def __init__(self, limit: int):
        super().__init__(413, _too_large(limit), headers={"Connection": "close"})


def _too_large(limit: int) -> str:
    return f"the request body is over the {_size(limit)} limit; send a smaller image"


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB" if n >= 1024 * 1024 else f"{n} bytes"


class Guard:
    def __init__(self, app: ASGIApp, *, allowed_hosts: frozenset[str] | None, max_body_bytes: int):
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if self.allowed_hosts is not None:
            name = normalise_host(headers.get(b"host", b"").decode("latin-1"))
            if name is None or name not in self.allowed_hosts:
                await _send_json(send, 400, "the Host header is not one this server answers to; "
                                 "start it with --allowed-host NAME to reach it by another name")
                return
        length = headers.get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _send_json(send, 400, "invalid Content-Length header")
                return
            if int(length) > self.max_body:
                await _send_json(send, 413, _too_large(self.max_body), close=True)
                return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in DEFAULT_HEADERS if k not in present
                ]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLarge:
            # Only reached when no route caught it (it streamed in after the route stopped reading).
            if not started:
                await _send_json(send, 413, _too_large(self.max_body), close=True)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for k, v in scope.get("headers", []):
        out.setdefault(k.lower(), v)  # the first of a repeated header, as Starlette reads it
    return out


async def _send_json(send: Send, status: int, detail: str, *, close: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *DEFAULT_HEADERS]
    if close:  # the rest of an oversized body is never read: end the connection rather than drain it
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
