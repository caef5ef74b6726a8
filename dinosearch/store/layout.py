"""What an index directory holds, named in one place, importable without SQLAlchemy, NumPy or FAISS.

    catalogue.sqlite3        SQLite (WAL): images, failures, settings, alembic_version
    vectors-<gen>.faiss      the FAISS index (its type is recorded in settings), keyed by the images row id
    writer.lock              the writer lock (held by `index` while it writes)
    cache/                   what can be made again: the model converted for --backend onnxruntime

Commands that must start fast (`stats`) read these with the standard library alone.
"""

from __future__ import annotations

import struct
from pathlib import Path

DB_NAME = "catalogue.sqlite3"
LOCK_NAME = "writer.lock"
CACHE_DIR = "cache"

# The Alembic revision this code writes. A database at another known revision is migrated on open;
# one at an unknown revision was written by a newer dinosearch and is refused.
SCHEMA_REVISION = "0002_frames"

# Keys of the settings table (values are JSON).
VERSION_KEY = "version"  # an integer bumped by every write to the catalogue
MODEL_KEY = "model"  # the ModelFingerprint of the model that made the vectors
GENERATION_KEY = "faiss"  # the FAISS file written last: {"generation", "type", "count", "dim", "version", "bytes"}

# The FAISS factory string of the exact index: an id map (the images row id) over flat inner product.
# Files written before the type was recorded are of this type.
FLAT = "IDMap2,Flat"


def recorded_type(state: dict) -> str:
    """The FAISS factory string of the file a GENERATION_KEY setting describes."""
    return str(state.get("type") or FLAT)


def vectors_file(index_dir: Path, generation: int) -> Path:
    return Path(index_dir) / f"vectors-{generation}.faiss"


def peek_vectors(path: Path) -> tuple[int, int] | None:
    """(dim, count) from an IndexIDMap2 file's header, without importing FAISS; None if not one.

    The header is the fourcc "IxM2", then d (int32) and ntotal (int64), little-endian.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if len(head) < 16 or head[:4] != b"IxM2":
        return None
    return struct.unpack("<iq", head[4:16])


def vectors_current(index_dir: Path, state: dict, *, version: int, dim: int, images: int) -> bool:
    """Whether the FAISS file SQLite last recorded (`state`, the GENERATION_KEY setting) was written at
    this catalogue `version` and holds `images` vectors of `dim`, by its own header too."""
    if state.get("version") != version or state.get("dim") != dim or state.get("count") != images:
        return False
    if recorded_type(state) != FLAT:
        return False  # only the flat file's header is read here
    return peek_vectors(vectors_file(index_dir, int(state.get("generation", 0)))) == (dim, images)


def disk_bytes(index_dir: Path) -> int:
    """The size of the files in the index directory."""
    total = 0
    for p in Path(index_dir).iterdir():
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:  # removed meanwhile (an old FAISS generation being cleared)
            pass
    return total
