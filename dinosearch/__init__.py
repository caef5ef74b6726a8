"""dinosearch: local-first image similarity search with DINOv2, FAISS and SQLite.

Public API (imported lazily, so `import dinosearch` and the CLI start fast):
    Index, Hit, Failure, IndexReport, Stats, VideoOptions, DinosearchError, Prediction, Evaluation, ExportReport, DuplicateGroup,
    DuplicateMember
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Index": "dinosearch.api",
    "embed_images": "dinosearch.api",
    "Dinov2Embedder": "dinosearch.embed",
    "Embedder": "dinosearch.embed",
    "Hit": "dinosearch.records",
    "Failure": "dinosearch.records",
    "IndexReport": "dinosearch.records",
    "Stats": "dinosearch.records",
    "ModelFingerprint": "dinosearch.records",
    "VideoOptions": "dinosearch.records",
    "DinosearchError": "dinosearch.errors",
    "Prediction": "dinosearch.label",
    "Evaluation": "dinosearch.evaluate",
    "ExportReport": "dinosearch.export",
    "DuplicateGroup": "dinosearch.duplicates",
    "DuplicateMember": "dinosearch.duplicates",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dinosearch' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
