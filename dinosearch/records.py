"""Typed records passed between the pipeline stages (walk -> decode -> embed -> store -> search)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

# Our own pixel cap, checked from an image's header before any pixel is decoded. It equals Pillow's
# hard limit, so nothing between Pillow's warning and error thresholds is decoded at full size.
MAX_PIXELS = 2 * 89_478_485


class FailureKind(str, Enum):
    """Why one file could not be used. The values are the strings users see (`failures`, the API)."""

    EMPTY = "empty"
    NOT_AN_IMAGE = "not-an-image"
    UNSUPPORTED_FORMAT = "unsupported-format"
    UNSUPPORTED = "unsupported"  # a valid file of a variant the codec cannot decode (not damaged)
    CORRUPT = "corrupt"
    TOO_LARGE = "too-large"
    UNREADABLE = "unreadable"
    TIMEOUT = "timeout"
    CRASHED = "crashed"
    NOT_A_VIDEO = "not-a-video"  # named like a video (.mp4 ...), but not an allowed video container
    UNSUPPORTED_CODEC = "unsupported-codec"  # a video whose codec is not on the allowlist
    NOT_FOUND = "not-found"  # a query path that does not exist (never recorded: the walk only finds files)

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def display_path(path: str) -> str:
    """An unambiguous, JSON-safe form of a path for people: a backslash is shown as ``\\\\`` and a byte
    that is not UTF-8 as ``\\xNN``, so a name holding the byte 0xE9 and one literally holding the four
    characters ``\\xe9`` never look alike. `path_from_display` reverses it."""
    return os.fsencode(path).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


_DISPLAY_ESCAPE = re.compile(rb"\\(\\|x[0-9a-f]{2})")


def path_from_display(text: str) -> str:
    """The path that `display_path` showed as `text` (``\\\\`` -> a backslash, ``\\xNN`` -> the byte NN)."""
    raw = _DISPLAY_ESCAPE.sub(
        lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1)[1:], 16)]), text.encode("utf-8")
    )
    return os.fsdecode(raw)


def path_fields(path: str) -> dict[str, Any]:
    """The JSON fields naming a file. A UTF-8 name is given exactly: {"path": name}. Any other name
    cannot be JSON text as it is: {"path": display_path(path), "path_escaped": True}, which
    `path_from_display` turns back into the file system's name."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # surrogate-escaped bytes: the name is not UTF-8
        return {"path": display_path(path), "path_escaped": True}
    return {"path": path}


@dataclass(frozen=True)
class ImageFile:
    """A candidate file found by the walk: stat only, never opened."""

    path: str  # absolute, as os.fsdecode gives it (surrogate-escaped where not UTF-8)
    root: str
    size: int
    mtime_ns: int
    video: bool = False  # named like a video: indexed as frames, with --video only


@dataclass(frozen=True)
class VideoOptions:
    """How videos are sampled into frames (`index --video`)."""

    interval: float = 2.0  # seconds between sampled frames
    max_frames: int = 200  # frames per file at most (the interval widens to fit long videos)

    def __post_init__(self) -> None:
        if not self.interval > 0 or self.max_frames < 1:
            raise ValueError(f"video sampling needs an interval > 0 s and at least 1 frame, not {self.interval} s and {self.max_frames}")


@dataclass(frozen=True)
class Preprocess:
    """How pixels are prepared for the model, derived from the checkpoint's processor config."""

    resize_shortest: int  # shortest edge after resize (0: no resize)
    crop_height: int
    crop_width: int
    resample: int  # a PIL.Image.Resampling value
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float = 1 / 255
    crop_mode: str = "center"  # center (resize + centre crop), squash or border: dinosearch.prepare

    def describe(self) -> str:
        return (
            f"resize{self.resize_shortest}-crop{self.crop_height}x{self.crop_width}-resample{self.resample}"
            f"-mean{','.join(f'{m:.4f}' for m in self.mean)}-std{','.join(f'{s:.4f}' for s in self.std)}"
        ) + ("" if self.crop_mode == "center" else f"-{self.crop_mode}")  # centre: as before, same indexes


@dataclass(frozen=True)
class ModelFingerprint:
    """Which model made the vectors. Two fingerprints are compatible when `key()` is equal."""

    model: str  # hub id or local directory, as the user named it
    weights: str  # hash of the weights actually loaded
    dim: int
    preprocess: str
    pooling: str = "cls"
    precision: str = "fp32"

    def key(self) -> tuple[str, int, str, str]:
        # Precision is recorded but does not split an index: bf16/fp16 vectors agree with fp32 to
        # cosine > 0.99, which the tests of the fast paths check.
        return (self.weights, self.dim, self.preprocess, self.pooling)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "weights": self.weights,
            "dim": self.dim,
            "preprocess": self.preprocess,
            "pooling": self.pooling,
            "precision": self.precision,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelFingerprint":
        return cls(**{k: d[k] for k in ("model", "weights", "dim", "preprocess", "pooling", "precision")})


@dataclass(frozen=True)
class Hit:
    """One search result."""

    rank: int
    id: int
    score: float  # cosine similarity
    path: str
    metadata: dict[str, Any] | None = None
    folded: tuple[int, ...] | None = None  # with collapsing: ids of near-identical hits folded into this one
    timestamp: float | None = None  # seconds into the video, for a video frame; None for a photo

    def to_dict(self) -> dict[str, Any]:
        out = {
            "rank": self.rank,
            "id": self.id,
            "score": round(self.score, 6),
            **path_fields(self.path),
            "metadata": self.metadata,
            "timestamp": self.timestamp,
        }
        if self.folded is not None:
            out["folded"] = list(self.folded)
        return out


def format_timestamp(seconds: float) -> str:
    """Seconds -> ``HH:MM:SS.s`` (tenths), as `query` prints a video frame's time."""
    tenths = int(round(seconds * 10))
    return f"{tenths // 36000:02d}:{tenths // 600 % 60:02d}:{tenths // 10 % 60:02d}.{tenths % 10}"


@dataclass(frozen=True)
class Failure:
    """A file that could not be indexed, and what to do about it."""

    path: str
    error: str  # a FailureKind value
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {**path_fields(self.path), "error": self.error, "message": self.message}


@dataclass(frozen=True)
class IndexReport:
    """Counts of files in one index run."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    seconds: float = 0.0
    embedded: int = 0  # images that went through the model (the rest reused a stored vector)
    warnings: tuple[str, ...] = field(default_factory=tuple)
    metadata_matched: int | None = None  # with a metadata file: rows attached to images
    metadata_unknown: tuple[str, ...] = ()  # ... and rows naming files that are not indexed
    labelled: int | None = None  # with label_from_folder: images whose `label` was set or kept

    @property
    def images_per_second(self) -> float:
        done = self.added + self.updated
        return done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
        }
        if self.metadata_matched is not None:
            # Names as the metadata file (UTF-8 text) gave them.
            d["metadata"] = {"matched": self.metadata_matched, "unknown": list(self.metadata_unknown)}
        if self.labelled is not None:
            d["labelled"] = self.labelled
        return d


@dataclass(frozen=True)
class Stats:
    images: int
    vectors: int
    failed: int
    model: str | None
    dim: int | None
    index_type: str
    bytes: int
    nlist: int | None = None  # inverted lists of an IVF index (None: exact)
    nprobe: int | None = None  # lists searched per query, tuned to reach recall@10 >= 0.95
    code_size: int | None = None  # bytes per vector in the index
    recall: float | None = None  # recall@10 against exact search, measured on the collection's own vectors

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "vectors": self.vectors,
            "failed": self.failed,
            "model": self.model,
            "dim": self.dim,
            "index_type": self.index_type,
            "bytes": self.bytes,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "code_size": self.code_size,
            "recall": self.recall,
        }
