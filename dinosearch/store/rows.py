"""What the catalogue stores, as Python values: row records, and how paths and vectors are encoded."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

CHUNK = 500  # values per `IN (...)`: well under SQLite's bound-parameter limit


def chunks(values: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most `size` values."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def path_key(path: str) -> bytes:
    """A path as the bytes stored in SQLite."""
    return os.fsencode(path)


def path_of(key: bytes) -> str:
    return os.fsdecode(key)


def prefix_range(root: str) -> tuple[bytes, bytes]:
    """[lo, hi) of the stored keys of every path strictly below `root` (BLOBs compare by bytes)."""
    lo = path_key(root.rstrip(os.sep) + os.sep)
    return lo, lo[:-1] + bytes([lo[-1] + 1])


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def vector_from(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


class Known(NamedTuple):
    """What the catalogue knows of a path: enough to skip it unchanged without opening it. A named
    tuple: a plan of a million files builds a million of them."""

    id: int
    size: int
    mtime_ns: int
    content_hash: str
    video: bool = False  # the path's rows are a video's frames


@dataclass(frozen=True)
class ImageRow:
    """A row to write: a new image, or new content for an existing id."""

    path: str
    root: str
    size: int
    mtime_ns: int
    content_hash: str
    vector: bytes
    width: int | None = None
    height: int | None = None
    format: str | None = None
    meta: dict[str, Any] | None = None
    id: int | None = None  # set: update this row in place (its id stays stable)
    timestamp: float | None = None  # a video frame: seconds into the video
    thumbnail: bytes | None = None  # a video frame: its small JPEG


@dataclass(frozen=True)
class FrameRow:
    """A stored video frame, as a renamed or copied video reuses it."""

    timestamp: float
    vector: bytes
    thumbnail: bytes | None
    width: int | None
    height: int | None
    format: str | None


@dataclass(frozen=True)
class FailureRow:
    path: str
    root: str
    size: int
    mtime_ns: int
    error: str
    message: str
