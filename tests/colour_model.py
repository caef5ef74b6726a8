"""A deterministic stand-in for the model in fast tests: an image's vector is its mean colour.

With solid-colour images the cosine between any two vectors is known by hand, so tests of the vote
and of `eval` can state the right answer exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dinosearch.embed import l2_normalise
from dinosearch.records import ModelFingerprint, Preprocess


class ColourEmbedder:
    """(n, 16, 16, 3) uint8 -> (n, 3) unit mean-RGB vectors."""

    def __init__(self) -> None:
        self.preprocess = Preprocess(0, 16, 16, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.fingerprint = ModelFingerprint("mean-colour", "mean-colour", 3, self.preprocess.describe())
        self.batch_size = 8

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        return l2_normalise(pixels.reshape(len(pixels), -1, 3).mean(axis=1))


def solid(path: Path, rgb: tuple[int, int, int]) -> Path:
    """A 32x32 PNG of one colour (PNG: the colour survives exactly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), rgb).save(path)
    return path


def unit(rgb: tuple[int, int, int]) -> np.ndarray:
    v = np.asarray(rgb, dtype=np.float64)
    return v / np.linalg.norm(v)
