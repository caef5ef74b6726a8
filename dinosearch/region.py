"""Regions of a query image: a box, in pixels or in fractions of the upright image, embedded alone.

Coordinates always refer to the image as a viewer shows it (after EXIF orientation), so a box drawn
on a phone photo means the same pixels here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .decode import Decoded, load_rgb, resize_and_crop
from .errors import QueryError
from .records import MAX_PIXELS, Preprocess


@dataclass(frozen=True)
class Crop:
    """A box: left, top, width, height. All four <= 1: fractions of the width and height; else pixels."""

    x: float
    y: float
    w: float
    h: float

    @property
    def fractional(self) -> bool:
        return max(self.x, self.y, self.w, self.h) <= 1.0

    def __str__(self) -> str:
        return ",".join(f"{v:g}" for v in (self.x, self.y, self.w, self.h))


def parse_crop(text: str) -> Crop:
    """"x,y,w,h" -> Crop. Raises QueryError for anything else (four finite numbers, none negative,
    width and height above 0)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise QueryError(f"crop {text!r}: give x,y,w,h as four numbers (pixels, or fractions 0-1 of the image)")
    crop = Crop(*values)
    if min(values) < 0 or crop.w <= 0 or crop.h <= 0:
        raise QueryError(f"crop {text!r}: x and y must be >= 0, width and height > 0")
    return crop


def crop_box(crop: Crop, width: int, height: int) -> tuple[int, int, int, int]:
    """The crop on an upright width x height image -> (left, top, right, bottom) in whole pixels.

    Raises QueryError when the box reaches outside the image or covers less than one pixel.
    """
    sx, sy = (width, height) if crop.fractional else (1, 1)
    left, top = crop.x * sx, crop.y * sy
    right, bottom = left + crop.w * sx, top + crop.h * sy
    slack = 1e-6 * max(sx, sy)  # fractions like 1/3 + 2/3 may sum to a hair over 1
    if right > width + slack or bottom > height + slack:
        unit = "of the image" if crop.fractional else "px"
        raise QueryError(
            f"crop {crop} {unit} reaches outside the {width}x{height} image (after EXIF orientation)"
        )
    box = (round(left), round(top), min(width, round(right)), min(height, round(bottom)))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise QueryError(f"crop {crop} covers less than one pixel of the {width}x{height} image")
    return box


def decode_region(data: bytes, pre: Preprocess, crop: Crop, *, max_pixels: int = MAX_PIXELS) -> Decoded:
    """File bytes -> model-ready pixels of the cropped region, at full resolution (no reduced-scale
    decode: a small box keeps all its detail). Raises DecodeError, QueryError."""
    im, (width, height), fmt = load_rgb(data, min_side=0, max_pixels=max_pixels)
    region = im.crop(crop_box(crop, width, height))
    return Decoded(resize_and_crop(region, pre), width, height, fmt)


def region_of_pil(im: Image.Image, pre: Preprocess, crop: Crop) -> np.ndarray:
    """A PIL image (upright after EXIF orientation) -> model-ready pixels of the region."""
    from .decode import _to_rgb, _upright

    upright = _to_rgb(_upright(im))
    return resize_and_crop(upright.crop(crop_box(crop, *upright.size)), pre)
