"""How an image is prepared for the model: crop mode and resolution (pooling is dinosearch.pooling).

- center: as the checkpoint's processor (resize the shortest edge, centre crop). It cuts off what
  lies outside the central square: the ends of a long product, the edges of a panorama.
- squash: resize the whole image to the model's square, aspect ratio not kept (timm's "squash").
- border: letterbox: resize the longest edge to the square and pad the rest with the mean colour
  (timm's "border"), so nothing is cut and nothing is distorted.

`--resolution N` (a multiple of the patch size, 14) sets the square's side; with `center` the
shortest edge is resized in the checkpoint's proportion (256 for 224). DINOv2 was trained up to 518 px
and interpolates its position embeddings for other sizes.

The choice is part of the index's model fingerprint (`Preprocess.describe`, `ModelFingerprint.pooling`):
an index made one way refuses vectors prepared another way, as it refuses another model.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from .errors import DinosearchError
from .records import ModelFingerprint, Preprocess

CROP_MODES = ("center", "squash", "border")
POOLINGS = ("cls", "cls+mean", "gem")
MAX_RESOLUTION = 1036  # 74 patches of 14 px a side, twice what DINOv2 was trained at


def check_options(*, crop_mode: str, resolution: int | None, pooling: str, patch_size: int = 14) -> None:
    """Raise DinosearchError (one line) for an option dinosearch cannot prepare."""
    if crop_mode not in CROP_MODES:
        raise DinosearchError(f"unknown crop mode {crop_mode!r}; use {', '.join(CROP_MODES)}")
    if pooling not in POOLINGS:
        raise DinosearchError(f"unknown pooling {pooling!r}; use {', '.join(POOLINGS)}")
    if resolution is not None and (resolution % patch_size or not patch_size <= resolution <= MAX_RESOLUTION):
        raise DinosearchError(
            f"--resolution {resolution}: use a multiple of the model's patch size {patch_size} "
            f"between {patch_size} and {MAX_RESOLUTION} (e.g. 224, 336, 448, 518)"
        )


def adapt(pre: Preprocess, *, crop_mode: str = "center", resolution: int | None = None) -> Preprocess:
    """The checkpoint's preparation changed to `crop_mode` at `resolution` px (None: the checkpoint's crop)."""
    side_h, side_w = (resolution, resolution) if resolution else (pre.crop_height, pre.crop_width)
    if crop_mode != "center":
        return replace(pre, resize_shortest=0, crop_height=side_h, crop_width=side_w, crop_mode=crop_mode)
    if resolution is None or (side_h, side_w) == (pre.crop_height, pre.crop_width):
        return pre
    shortest = round(resolution * pre.resize_shortest / pre.crop_height) if pre.resize_shortest else 0
    return replace(pre, resize_shortest=shortest, crop_height=side_h, crop_width=side_w)


def fit(im: Image.Image, pre: Preprocess) -> np.ndarray:
    """An RGB image -> (crop_height, crop_width, 3) uint8 by `squash` or `border` (see the module)."""
    size = (pre.crop_width, pre.crop_height)
    if pre.crop_mode == "squash":
        return np.asarray(im.resize(size, resample=pre.resample), dtype=np.uint8)
    # border: the rounding of PIL.ImageOps.contain, then centred on the mean colour
    width, height = im.size
    if width / height >= size[0] / size[1]:
        new = (size[0], max(1, round(height * size[0] / width)))
    else:
        new = (max(1, round(width * size[1] / height)), size[1])
    canvas = Image.new("RGB", size, mean_colour(pre))
    canvas.paste(im.resize(new, resample=pre.resample), ((size[0] - new[0]) // 2, (size[1] - new[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def mean_colour(pre: Preprocess) -> tuple[int, int, int]:
    """The normalisation mean as 8-bit RGB: the colour that becomes zero input ((124, 116, 104) for ImageNet)."""
    return tuple(int(round(m / pre.rescale)) for m in pre.mean)  # type: ignore[return-value]


def options_of(fp: ModelFingerprint) -> dict[str, Any]:
    """The crop mode, resolution and pooling an index was made with, read back from its fingerprint."""
    mode = fp.preprocess.rsplit("-", 1)[-1]
    crop = re.search(r"crop(\d+)x(\d+)", fp.preprocess)
    return {
        "crop_mode": mode if mode in CROP_MODES else "center",
        "resolution": int(crop.group(1)) if crop and crop.group(1) == crop.group(2) else None,
        "pooling": fp.pooling,
    }


def describe_options(fp: ModelFingerprint) -> str:
    o = options_of(fp)
    return f"--crop-mode {o['crop_mode']} --resolution {o['resolution']} --pooling {o['pooling']}"
