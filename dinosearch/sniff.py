"""What a file is, by its first bytes: for messages that say what a refused file really is."""

from __future__ import annotations

_SIGNATURES = (
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD (Photoshop)"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"SIMPLE  =", "FITS"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "gzip data"),
)


# Magic numbers of the allowed formats: bytes that start like one but that Pillow cannot identify are a
# damaged image ("corrupt"), not some other kind of file.
_IMAGE_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _magic(data: bytes, signatures: tuple[tuple[bytes, str], ...]) -> str | None:
    """The name of the first signature the bytes start with."""
    return next((name for magic, name in signatures if data.startswith(magic)), None)


def damaged_format(data: bytes) -> str | None:
    """The allowed format the bytes claim to be by their magic number, if any."""
    claimed = _magic(data, _IMAGE_SIGNATURES)
    if claimed is not None:
        return claimed
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM" and len(data) >= 26 and int.from_bytes(data[2:6], "little") in (0, len(data)):
        return "BMP"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis", b"hevc"):
        return "HEIF/AVIF"
    return None


def sniff(data: bytes) -> str | None:
    """Name what the bytes look like, for the failure message of a non-image."""
    known = _magic(data, _SIGNATURES)
    if known is not None:
        return known
    head = data[:512].lstrip().lower()
    if b"<svg" in head or (head.startswith(b"<?xml") and b"svg" in head):
        return "SVG"
    if head.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    try:
        data[:512].decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return None
