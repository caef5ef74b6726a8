"""Read-only answers straight from SQLite with the standard library, for commands that must start fast.

`dinosearch stats` is a fresh process each time, and importing SQLAlchemy and NumPy costs more than the
answer itself. When the database is at this code's schema revision and the FAISS file's header matches
what SQLite says it wrote, stdlib `sqlite3` in read-only mode gives the same answer as `Index.stats`.
Anything else (no index, a schema to migrate, a FAISS file to rebuild, a locked or unreadable
database) returns None, and the caller takes the full path, which deals with it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from ..records import Stats
from .layout import DB_NAME, GENERATION_KEY, MODEL_KEY, SCHEMA_REVISION, VERSION_KEY, disk_bytes, index_fields, vectors_current


def quick_stats(index_dir: Path) -> Stats | None:
    index_dir = Path(index_dir).expanduser()
    db = index_dir / DB_NAME
    if not db.is_file():
        return None
    try:
        # mode=ro: this never creates, migrates or checkpoints anything; the full path does that.
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.execute("BEGIN")  # one snapshot for every read below (a writer may be committing meanwhile)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "alembic_version" not in tables or conn.execute("SELECT version_num FROM alembic_version").fetchone() != (SCHEMA_REVISION,):
            return None
        settings: dict[str, Any] = {
            key: json.loads(value)
            for key, value in conn.execute(
                "SELECT key, value FROM settings WHERE key IN (?, ?, ?)", (MODEL_KEY, VERSION_KEY, GENERATION_KEY)
            )
        }
        images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
        failed = conn.execute("SELECT count(*) FROM failures").fetchone()[0]
        conn.execute("COMMIT")
    except (sqlite3.Error, ValueError):
        return None
    finally:
        conn.close()

    model = settings.get(MODEL_KEY) or None
    state = settings.get(GENERATION_KEY) or {}
    if model is not None:
        version = int(settings.get(VERSION_KEY) or 0)
        current = vectors_current(index_dir, state, version=version, dim=model.get("dim"), images=images)
        if not current:
            return None  # the FAISS file is behind SQLite: the full path rebuilds it
    return Stats(
        images=images,
        vectors=images if model is not None else 0,
        failed=failed,
        model=model.get("model") if model else None,
        dim=model.get("dim") if model else None,
        bytes=disk_bytes(index_dir),
        **index_fields(state),
    )
