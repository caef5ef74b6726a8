"""The per-file decode failures: DecodeError, and the messages of the kinds that need explaining
(an image over the pixel limit, a valid file of a variant the codec cannot read)."""

from __future__ import annotations

from PIL import Image, TiffImagePlugin

from .records import FailureKind as K


class DecodeError(Exception):
    """A per-file failure: `kind` is a short tag, the message says what is wrong and what to do."""

    def __init__(self, kind: K, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


# How to raise the pixel limit, named in the too-large message.
RAISE_LIMIT = "`dinosearch index --max-pixels N` (Index.add(..., max_pixels=N))"


def too_large(size: tuple[int, int] | None, max_pixels: int) -> DecodeError:
    dims = f"is {size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.0f} MP)" if size else "declares more pixels than that"
    return DecodeError(
        K.TOO_LARGE,
        f"{dims}, over the limit of {max_pixels} pixels ({max_pixels / 1e6:.0f} MP); "
        f"downscale it, or raise the limit with {RAISE_LIMIT}",
    )


# Pillow's words for a valid file of a variant it does not implement (BMP bit layouts and compressions,
# TIFF codecs left out of this libtiff), as opposed to damage.
_UNSUPPORTED_WORDS = ("unsupported", "not supported", "not configured", "not implemented", "unknown compression")

# TIFF compressions every Pillow build reads (raw, CCITT, LZW, JPEG, deflate, PackBits).
_TIFF_COMMON = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 32773, 32946})


def is_unsupported(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, ValueError, NotImplementedError)) and any(
        w in str(exc).lower() for w in _UNSUPPORTED_WORDS
    )


def unsupported(fmt: str, why: str) -> DecodeError:
    return DecodeError(
        K.UNSUPPORTED,
        f"a valid {fmt} file of a variant this decoder cannot read ({why.rstrip('.')}); "
        "the file is not damaged: convert it to PNG or JPEG to index it",
    )


def unsupported_tiff(im: Image.Image) -> DecodeError | None:
    compression = getattr(im, "tag_v2", {}).get(259) if im.format == "TIFF" else None
    if compression is None or compression in _TIFF_COMMON:
        return None
    return unsupported("TIFF", f"compression {TiffImagePlugin.COMPRESSION_INFO.get(compression, compression)}")


def kind_of(exc: BaseException) -> str:
    """What part of a file a codec exception points at, for a message."""
    return "data" if isinstance(exc, (ValueError, SyntaxError)) else "structure"
