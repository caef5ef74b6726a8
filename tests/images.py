"""Generated test images: photo-like content in every format and shape the indexer must handle."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def photo(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image (gradients + blobs), different for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 6.28)]
        img[..., c] = 127 + 80 * np.sin(x / width * fx * 6.28 + ph) * np.cos(y / height * fy * 6.28)
    for _ in range(6):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.05, 0.3) * min(width, height)
        color = rng.uniform(0, 255, 3)
        mask = ((x - cx) ** 2 + (y - cy) ** 2) < r * r
        img[mask] = 0.4 * img[mask] + 0.6 * color
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def save(im: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kwargs)
    return path


def jpeg_bytes(im: Image.Image, quality: int = 90, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, **kwargs)
    return buf.getvalue()


def with_exif_orientation(im: Image.Image, orientation: int) -> bytes:
    """A JPEG whose pixels are stored rotated, with the EXIF tag that makes a viewer undo it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = {6: im.transpose(Image.Transpose.ROTATE_90), 8: im.transpose(Image.Transpose.ROTATE_270), 3: im.rotate(180)}[orientation]
    return jpeg_bytes(stored, quality=95, exif=exif.tobytes())
