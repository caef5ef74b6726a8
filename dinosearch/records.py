"""Typed records passed between the pipeline stages (walk -> decode -> embed -> store -> search)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


def display_path(path: str) -> str:
    """A printable, JSON-safe form of a path: undecodable bytes become ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class ImageFile:
    """A candidate file found by the walk: stat only, never opened."""

    path: str  # absolute, as os.fsdecode gives it (surrogate-escaped where not UTF-8)
    root: str
    size: int
    mtime_ns: int


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "id": self.id,
            "score": round(self.score, 6),
            "path": display_path(self.path),
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class Failure:
    """A file that could not be indexed, and what to do about it."""

    path: str
    error: str  # a short kind: not-an-image, unsupported-format, corrupt, too-large, unreadable, timeout, crashed
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": display_path(self.path), "error": self.error, "message": self.message}


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
            d["metadata"] = {"matched": self.metadata_matched, "unknown": [display_path(p) for p in self.metadata_unknown]}
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "vectors": self.vectors,
            "failed": self.failed,
            "model": self.model,
            "dim": self.dim,
            "index_type": self.index_type,
            "bytes": self.bytes,
        }
