"""The API key: `Authorization: Bearer KEY` on every /api/ route, compared in constant time.

An <img> element cannot send that header, so image and thumbnail URLs handed out by an authorised
search carry a signed token instead: an HMAC of (kind, id, expiry) under the key, valid for one image
for about a day, and useless for any other route or id.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from fastapi import HTTPException, Request

TOKEN_HOURS = 24


def require_key(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries the server's key (when it has one)."""
    key = _key(request)
    if key is not None and not has_bearer(request, key):
        raise _unauthorised()


def require_key_or_token(request: Request, kind: str, image_id: int) -> None:
    key = _key(request)
    if key is None or has_bearer(request, key):
        return
    token = request.query_params.get("token")
    if token is None or not check_token(key, kind, image_id, token):
        raise _unauthorised()


def has_bearer(request: Request, key: str) -> bool:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), key.encode())


def sign(key: str, kind: str, image_id: int, now: float | None = None) -> str:
    """A token for one image URL. The expiry is rounded to the hour, so a URL stays the same (and
    browser-cacheable) for an hour, and lives 24-25 hours."""
    hour = int((time.time() if now is None else now) // 3600)
    expires = (hour + TOKEN_HOURS + 1) * 3600
    return f"{expires}.{_mac(key, kind, image_id, expires)}"


def check_token(key: str, kind: str, image_id: int, token: str, now: float | None = None) -> bool:
    expires_text, _, mac = token.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12:
        return False
    expires = int(expires_text)
    if expires < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(mac.encode("utf-8", "surrogateescape"), _mac(key, kind, image_id, expires).encode())


def _mac(key: str, kind: str, image_id: int, expires: int) -> str:
    return hmac.new(key.encode(), f"{kind}:{image_id}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]


def _key(request: Request) -> str | None:
    return request.app.state.settings.api_key or None


def _unauthorised() -> HTTPException:
    return HTTPException(
        401, "missing or wrong API key: send the header `Authorization: Bearer KEY`", headers={"WWW-Authenticate": "Bearer"}
    )
