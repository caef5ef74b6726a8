"""Query images named by URL: http(s) only, a size cap, a deadline, redirects to http(s) only.

Used by the CLI and the Python API. The web server never fetches a URL for a client.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urljoin, urlsplit

from .errors import FetchError

MAX_URL_BYTES = 20 * 1024 * 1024  # as the server's default upload limit
URL_TIMEOUT = 20.0  # seconds for the whole fetch, redirects and body included
MAX_REDIRECTS = 5
_CHUNK = 64 * 1024

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(text: str) -> bool:
    """Whether a query argument is a URL (any scheme://), rather than a path."""
    return bool(_SCHEME.match(text))


class _Redirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def]
        target = urljoin(req.full_url, headers.get("Location") or headers.get("URI") or "")
        scheme = urlsplit(target).scheme.lower()
        if scheme not in ("http", "https"):
            # urllib itself would follow ftp://; a query follows http(s) only.
            raise FetchError(f"{req.full_url} redirects to a {scheme}: URL; only http and https are followed")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def fetch(url: str, *, max_bytes: int = MAX_URL_BYTES, timeout: float = URL_TIMEOUT) -> bytes:
    """The body of an http(s) URL, at most `max_bytes` bytes, within `timeout` seconds in all.

    Raises FetchError: another scheme, a redirect to another scheme, an HTTP error status, a body over
    the cap, the deadline passed, or no network (the message says so).
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"{url}: only http and https URLs can be queried")
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(_Redirects())
    request = urllib.request.Request(url, headers={"User-Agent": "dinosearch", "Accept": "image/*"})
    try:
        with opener.open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError(f"{url} is {int(declared) / 1e6:.1f} MB, over the {max_bytes / 1e6:.1f} MB limit")
            return _read_capped(response, url, max_bytes, deadline, timeout)
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: the server answered {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FetchError(_network_message(url, exc.reason, timeout)) from None
    except (TimeoutError, socket.timeout):
        raise FetchError(f"{url}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise FetchError(_network_message(url, exc, timeout)) from None


def _read_capped(response: object, url: str, max_bytes: int, deadline: float, timeout: float) -> bytes:
    chunks, size = [], 0
    while True:
        if time.monotonic() > deadline:  # a server dripping bytes must not hold the query forever
            raise FetchError(f"{url}: not finished within {timeout:g} s")
        chunk = response.read(_CHUNK)  # type: ignore[attr-defined]
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"{url} is over the {max_bytes / 1e6:.1f} MB limit")
        chunks.append(chunk)


def _network_message(url: str, reason: object, timeout: float) -> str:
    host = urlsplit(url).hostname or url
    if isinstance(reason, socket.gaierror):
        return f"{url}: cannot resolve {host} (offline?); download the image and query the file instead"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"{url}: no answer within {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return f"{url}: {host} refused the connection"
    return f"{url}: cannot fetch it ({reason}); check the address and your network"
