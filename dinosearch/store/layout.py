"""What an index directory holds, named in one place, importable without SQLAlchemy, NumPy or FAISS.

    catalogue.sqlite3        SQLite (WAL): images, image_meta, failures, settings, alembic_version
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
SCHEMA_REVISION = "0004_path_stat"

# Keys of the settings table (values are JSON).
VERSION_KEY = "version"  # an integer bumped by every write to the catalogue
MODEL_KEY = "model"  # the ModelFingerprint of the model that made the vectors
# The FAISS file written last: {"generation", "type", "count", "dim", "version", "bytes"}, and for its
# kind: "nlist", "code_size", "nprobe" (tuned), "recall" (recall@10 measured at that nprobe), "trained"
# (the collection's size when an IVF index was trained), "requested" (auto, flat or a factory string)
# and "budget" (the memory budget in bytes, or null).
GENERATION_KEY = "faiss"

# The FAISS factory string of the exact index: an id map (the images row id) over flat inner product.
# Files written before the type was recorded are of this type.
FLAT = "IDMap2,Flat"


def recorded_type(state: dict) -> str:
    """The FAISS factory string of the file a GENERATION_KEY setting describes."""
    return str(state.get("type") or FLAT)


def index_fields(state: dict) -> dict:
    """What `stats` shows of the vector index a GENERATION_KEY setting describes: its type and parameters."""
    return {
        "index_type": recorded_type(state),
        "nlist": state.get("nlist"),
        "nprobe": state.get("nprobe"),
        "code_size": state.get("code_size"),
        "recall": state.get("recall", 1.0 if recorded_type(state) == FLAT and state else None),
    }


def vectors_file(index_dir: Path, generation: int) -> Path:
    return Path(index_dir) / f"vectors-{generation}.faiss"


def peek_vectors(path: Path, *, any_kind: bool = False) -> tuple[int, int] | None:
    """(dim, count) from an IndexIDMap2 file's header (with `any_kind`, any FAISS index file's), without
    importing FAISS; None if not one.

    Every FAISS index header is a fourcc ("IxM2" for IDMap2), then d (int32) and ntotal (int64), little-endian.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if len(head) < 16 or (head[:4] != b"IxM2" and not (any_kind and head[:4].isalnum())):
        return None
    return struct.unpack("<iq", head[4:16])


def vectors_current(index_dir: Path, state: dict, *, version: int, dim: int, images: int) -> bool:
    """Whether the FAISS file SQLite last recorded (`state`, the GENERATION_KEY setting) was written at
    this catalogue `version` and holds `images` vectors of `dim`, by its own header too."""
    if state.get("version") != version or state.get("dim") != dim or state.get("count") != images:
        return False
    path = vectors_file(index_dir, int(state.get("generation", 0)))
    return peek_vectors(path, any_kind=recorded_type(state) != FLAT) == (dim, images)


def disk_bytes(index_dir: Path) -> int:
    """The size of the files in the index directory."""
    total = 0
    for p in Path(index_dir).iterdir():
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:  # removed meanwhile (an old FAISS generation being cleared)
            pass
    return total
