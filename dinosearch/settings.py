"""Defaults and environment. Read only by entry points (cli, web, demo), never by the library."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_MODEL = "facebook/dinov2-small"


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
    """$DINOSEARCH_MODEL when set; the caller falls back to the index's own model, then DEFAULT_MODEL."""
    return os.environ.get("DINOSEARCH_MODEL") or None
