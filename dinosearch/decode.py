"""Decode: untrusted file bytes -> RGB pixels ready for the model, or a DecodeError saying why not.

Pure functions over bytes, so they can run in a sandboxed worker process (workers.py) that never
touches the file system, and so a file's hash and its pixels always come from the same bytes.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .codec_output import CodecOutput, quiet_codecs  # noqa: F401 - re-exported for the decode workers
from .decode_errors import RAISE_LIMIT, DecodeError, is_unsupported, kind_of, too_large, unsupported, unsupported_tiff  # noqa: F401
from .prepare import fit
from .records import MAX_PIXELS, Preprocess
from .records import FailureKind as K
from .sniff import damaged_format, sniff  # noqa: F401 - re-exported: callers meet them here

# By content, never by extension. Everything else (EPS, PDF, PSD, FITS, SVG ...) is never handed to a codec.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
SUPPORTED = "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF, AVIF"

_heif_registered = False


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        try:
            from pillow_heif import register_heif_opener

            register_heif_opener()
        except ImportError:  # HEIC files then fail with a message naming the missing package
            pass
        _heif_registered = True


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # (crop_height, crop_width, 3) uint8, RGB
    width: int  # of the original image, after EXIF orientation
    height: int
    format: str


def open_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open (not decode) an allowed image, checking the declared size before any pixel is read."""
    if not data:
        raise DecodeError(K.EMPTY, "the file is empty (0 bytes); re-copy or re-export it")
    _register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        claimed = damaged_format(data)
        if claimed is not None:
            raise DecodeError(
                K.CORRUPT, f"starts like a {claimed} file but its header is damaged or unsupported; re-copy or re-export it"
            ) from None
        what = sniff(data)
        seen = f" (the content is {what})" if what else ""
        raise DecodeError(
            K.NOT_AN_IMAGE, f"not a supported image{seen}; supported formats are {SUPPORTED}"
        ) from None
    except Image.DecompressionBombError:
        # Pillow's own limit fired first: ours (`max_pixels`, which may be higher) is the one that decides.
        im = _open_unchecked(data)
        if im is None or im.size[0] * im.size[1] > max_pixels:
            raise too_large(im.size if im is not None else None, max_pixels) from None
    except Exception as exc:  # noqa: BLE001 - codecs raise anything on malformed headers
        if is_unsupported(exc):
            raise unsupported(damaged_format(data) or "image", str(exc)) from None
        raise DecodeError(K.CORRUPT, f"unreadable {kind_of(exc)} in the image header; re-export the file") from None
    width, height = im.size
    if width <= 0 or height <= 0:
        raise DecodeError(K.CORRUPT, f"declares an impossible size {width}x{height}; re-export the file")
    if width * height > max_pixels:
        raise too_large((width, height), max_pixels)
    return im


def _open_unchecked(data: bytes) -> Image.Image | None:
    """Open through the allowed formats' own openers, without Pillow's bomb check (ours follows)."""
    Image.init()
    for fmt in ALLOWED_FORMATS:
        if fmt not in Image.OPEN:
            continue
        factory, accept = Image.OPEN[fmt]
        if accept is not None and not accept(data[:16]):
            continue
        try:
            return factory(io.BytesIO(data), "")
        except Exception:  # noqa: BLE001 - not this format: try the next
            continue
    return None


def load_rgb(
    data: bytes, *, min_side: int = 0, max_pixels: int = MAX_PIXELS
) -> tuple[Image.Image, tuple[int, int], str]:
    """Decode to an upright RGB image whose shortest side is still >= `min_side` (0: full size).

    JPEGs are decoded at a DCT scale (draft) when that keeps the shortest side >= min_side: a 12 MP
    photo then decodes at 1/8 of its size, several times faster. Returns the image, the original
    (upright) width and height, and the format.
    """
    im = open_image(data, max_pixels=max_pixels)
    fmt = im.format or "?"
    width, height = im.size
    try:
        im = _load(im, data, fmt, min_side)
        before = im.size
        im = _upright(im)
        if im.size != before and im.size == before[::-1]:
            width, height = height, width
        return _to_rgb(im), (width, height), fmt
    except DecodeError:
        raise
    except MemoryError:
        raise DecodeError(K.TOO_LARGE, "ran out of memory decoding this image; downscale it and try again") from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data raises many types
        variant = unsupported_tiff(im) or (unsupported(fmt, str(exc)) if is_unsupported(exc) else None)
        if variant is not None:
            raise variant from None
        raise DecodeError(
            K.CORRUPT, f"{fmt} data is truncated or corrupt ({type(exc).__name__}); re-copy or re-export it"
        ) from None


def _load(im: Image.Image, data: bytes, fmt: str, min_side: int) -> Image.Image:
    """Decode the pixels (the first frame of a GIF/WebP animation, the first page of a TIFF)."""
    if fmt == "JPEG" and min_side > 0:
        im.draft("RGB", (min_side, min_side))
    try:
        im.load()
        return im
    except OSError as exc:
        whole = _jpeg_without_end_marker(data, min_side) if fmt == "JPEG" and "truncated" in str(exc) else None
        if whole is None:
            raise
        return whole


_EOI = b"\xff\xd9"
# Bytes that are never a marker (no 0xFF): as entropy-coded data they decode to visible pixels.
_FILLER = bytes(range(0x20, 0xA0)) * 8


def _jpeg_without_end_marker(data: bytes, min_side: int) -> Image.Image | None:
    """The image of a JPEG whose every scan is complete but whose end marker (FF D9) is missing, as
    optimisers and some cameras write them; None when scan data is really missing.

    The test: decode it ended right after its last byte and ended after extra filler bytes. A decoder
    that had every scan skips the filler as junk before the marker, so both images are identical; one
    still inside a scan decodes the filler as pixels, so they differ."""

    def decoded(tail: bytes) -> Image.Image:
        im = Image.open(io.BytesIO(data + tail), formats=("JPEG",))
        if min_side > 0:
            im.draft("RGB", (min_side, min_side))
        im.load()
        return im

    try:
        ended, padded = decoded(_EOI), decoded(_FILLER + _EOI)
    except Exception:  # noqa: BLE001 - damaged beyond a missing end: the caller reports the first error
        return None
    return ended if ended.tobytes() == padded.tobytes() else None


def _upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - malformed EXIF must not fail the file: keep it as stored
        return im


_SRGB = None


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "CMYK":
        icc = im.info.get("icc_profile")
        if icc:
            global _SRGB
            try:
                if _SRGB is None:
                    _SRGB = ImageCms.createProfile("sRGB")
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                return ImageCms.profileToProfile(im, src, _SRGB, outputMode="RGB")
            except Exception:  # noqa: BLE001 - a broken profile: fall back to the plain conversion
                pass
        return im.convert("RGB")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit int) grey: scale to 8 bits instead of clipping everything above 255 to white.
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im)
        arr = np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
    if has_alpha or (mode in ("L", "1") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        # A fixed white background: transparent product shots are usually on white.
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def resize_and_crop(im: Image.Image, pre: Preprocess) -> np.ndarray:
    """Resize the shortest edge and centre-crop exactly as the checkpoint's image processor does.

    Returns (crop_height, crop_width, 3) uint8. Other crop modes: dinosearch.prepare.fit.
    """
    if pre.crop_mode != "center":
        return fit(im, pre)
    width, height = im.size
    ch, cw = pre.crop_height, pre.crop_width
    if pre.resize_shortest:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = pre.resize_shortest, int(pre.resize_shortest * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        if (new_w, new_h) != (width, height):
            im = _resize(im, (new_w, new_h), (cw, ch), pre.resample)
    width, height = im.size
    if width < cw or height < ch:  # smaller than the crop: pad with black as the processor does
        canvas = Image.new("RGB", (max(width, cw), max(height, ch)))
        canvas.paste(im, ((canvas.width - width) // 2, (canvas.height - height) // 2))
        im, width, height = canvas, canvas.width, canvas.height
    top, left = (height - ch) // 2, (width - cw) // 2
    im = im.crop((left, top, left + cw, top + ch))
    return np.asarray(im, dtype=np.uint8)


# Beyond this aspect ratio only the part of the image that the centre crop keeps is resampled. A
# 1x100000 px strip (a 100 kB PNG) would otherwise be resized to 256x25,600,000 px: 19 GB and minutes
# of work for the 224x224 that is kept. Ordinary photos take the plain path, identical to the
# checkpoint's processor.
MAX_FULL_RESIZE_ASPECT = 8


def _resize(im: Image.Image, size: tuple[int, int], crop: tuple[int, int], resample: int) -> Image.Image:
    """`im.resize(size)`, cut to the centred `crop` along an extremely long side (the same pixels, to
    within rounding, at a fraction of the memory and time)."""
    (new_w, new_h), (cw, ch) = size, crop
    width, height = im.size
    if new_w > MAX_FULL_RESIZE_ASPECT * new_h and new_w > cw:
        left, scale = (new_w - cw) // 2, width / new_w
        return im.resize((cw, new_h), resample=resample, box=(left * scale, 0, (left + cw) * scale, height))
    if new_h > MAX_FULL_RESIZE_ASPECT * new_w and new_h > ch:
        top, scale = (new_h - ch) // 2, height / new_h
        return im.resize((new_w, ch), resample=resample, box=(0, top * scale, width, (top + ch) * scale))
    return im.resize((new_w, new_h), resample=resample)


def decode(data: bytes, pre: Preprocess, *, max_pixels: int = MAX_PIXELS) -> Decoded:
    """File bytes -> model-ready pixels. Raises DecodeError for anything that is not a usable image."""
    min_side = pre.resize_shortest or max(pre.crop_height, pre.crop_width)
    im, (width, height), fmt = load_rgb(data, min_side=min_side, max_pixels=max_pixels)
    return Decoded(resize_and_crop(im, pre), width, height, fmt)


def prepare_pil(im: Image.Image, pre: Preprocess) -> np.ndarray:
    """An already-open PIL image (library callers) -> model-ready pixels, with the same conversions."""
    return resize_and_crop(_to_rgb(_upright(im)), pre)


def check_decodable(data: bytes, *, max_pixels: int = MAX_PIXELS) -> None:
    """Raise DecodeError unless the bytes decode, quietly and before any model is loaded."""
    with quiet_codecs():
        load_rgb(data, min_side=256, max_pixels=max_pixels)
