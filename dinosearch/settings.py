"""Defaults and environment, and what `dinosearch serve` was asked for. Read only by entry points
(cli, web, demo), never by the library.

No FastAPI or model import here: the CLI reads this module to refuse an unsafe bind before uvicorn
starts, then hands the settings to the app factory through one environment variable (uvicorn starts
the app from an import string, so the CLI never imports the web app).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import DinosearchError


def default_index_dir() -> Path:
    """$DINOSEARCH_INDEX, else the per-user data directory."""
    env = os.environ.get("DINOSEARCH_INDEX")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "dinosearch" / "index"


def model_from_env() -> str | None:
    """$DINOSEARCH_MODEL when set; the caller falls back to the index's own model, then dinosearch.model.DEFAULT_MODEL."""
    return os.environ.get("DINOSEARCH_MODEL") or None


# serve ---------------------------------------------------------------------------------------------

ENV_VAR = "DINOSEARCH_WEB_SETTINGS"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})

MB = 1024 * 1024


@dataclass(frozen=True)
class WebSettings:
    index_dir: str
    model: str | None = None
    device: str = "auto"
    backend: str = "torch"
    precision: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)
    allowed_hosts: tuple[str, ...] = ()  # extra Host header names, beyond loopback and the bind address
    insecure_no_api_key: bool = False  # the explicit opt-out for a non-loopback bind without a key
    max_body_bytes: int = 20 * MB  # the whole request body, streamed or not
    max_pixels: int = 50_000_000  # per uploaded image, checked from the header before decoding
    queue_size: int = 32  # uploads admitted (decoding or waiting for the model) before 503
    batch_size: int | None = None  # most images per model call [default: the embedder's own]
    decode_workers: int = 1  # processes decoding uploads; 0 decodes in a thread (tests, no spawn)
    decode_timeout: float = 20.0  # seconds one upload may take to decode
    request_timeout: float = 60.0  # seconds an upload may wait for the model before a 503
    max_k: int = 100
    thumb_size: int = 256
    thumb_cache_bytes: int = 64 * MB

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WebSettings":
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        if "allowed_hosts" in values:
            values["allowed_hosts"] = tuple(values["allowed_hosts"])
        return cls(**values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "WebSettings":
        text = environ.get(ENV_VAR)
        if not text:
            raise DinosearchError(f"${ENV_VAR} is not set; start the server with `dinosearch serve`")
        return cls.from_json(text)


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None, insecure_no_api_key: bool) -> None:
    """Refuse to expose the index beyond this machine without a key, unless explicitly told to."""
    if is_loopback(host) or api_key or insecure_no_api_key:
        return
    raise DinosearchError(
        f"refusing to serve on {host or 'all interfaces'} without --api-key: anyone who can reach it could "
        "search and download your images; pass --api-key KEY (or set DINOSEARCH_API_KEY), bind --host 127.0.0.1, "
        "or add --insecure-no-api-key if that is really intended"
    )


def allowed_host_names(settings: WebSettings) -> frozenset[str] | None:
    """Host header names the server answers to (lower case, no port); None accepts any.

    Loopback names always; the bind address; the machine's name on a wildcard bind; --allowed-host.
    A DNS-rebinding page reaches 127.0.0.1 with its own name in Host, which is not in this set.
    """
    names = set(LOOPBACK_NAMES)
    host = settings.host.strip("[]").lower()
    if host in WILDCARDS:
        names.add(socket.gethostname().lower())
    else:
        names.add(host)
    for extra in settings.allowed_hosts:
        if extra.strip() == "*":
            return None
        names.add(normalise_host(extra) or extra.lower())
    return frozenset(names)


def normalise_host(header: str) -> str | None:
    """A Host header value -> its name without port, lower case ("[::1]:8000" -> "::1"); None if malformed."""
    value = header.strip().lower()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1 :] and not _is_port(value[end + 1 :])):
            return None
        return value[1:end]
    name, sep, port = value.rpartition(":")
    if sep and ":" not in name:  # name:port (a bare IPv6 address has several colons and no brackets)
        if not _is_port(":" + port):
            return None
        value = name
    value = value.rstrip(".")
    if not value or any(c in value for c in "/\\@ \t\x00?#"):
        return None
    return value


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit() and len(text) <= 6
