"""Hostile and broken files, crafted byte by byte: what a photo folder or an upload form can hold."""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
from PIL import Image, ImageCms

from .images import jpeg_bytes, photo

FAULT_MAGIC = b"DINOSEARCH-TEST-FAULT:"  # = dinosearch._decode_worker.FAULT_MAGIC


def fault(kind: str) -> bytes:
    """Bytes that make a decode worker segfault / abort / hang / oom, only under DINOSEARCH_TEST_DECODE_FAULTS=1."""
    return FAULT_MAGIC + kind.encode() + b"\n"


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


# PNG -------------------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 0, rows: int | None = None, fill: int = 0) -> bytes:
    """A PNG declaring width x height whose IDAT holds `rows` rows (all of them by default) of `fill` bytes.

    Written by hand so that the declared size can be anything, whatever the data.
    """
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = b"\x00" + bytes([fill]) * ((width * channels * bit_depth + 7) // 8)
    n = height if rows is None else rows
    comp = zlib.compressobj(6)
    parts = [comp.compress(row * min(n, 64)) for _ in range(n // 64)]
    parts.append(comp.compress(row * (n % 64)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


# JPEG damage ------------------------------------------------------------------------------------------
def jpeg_header_only(seed: int = 0) -> bytes:
    """A JPEG cut right before its scan: every header, no image data."""
    data = jpeg_bytes(photo(320, 240, seed=seed))
    return data[: data.index(b"\xff\xda")]


def bit_flipped(data: bytes, *, start: int, end: int, flips: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(flips):
        p = rng.randrange(start, end)
        out[p] ^= 1 << rng.randrange(8)
    return bytes(out)


def jpeg_bitflip_scan(seed: int = 0) -> bytes:
    data = jpeg_bytes(photo(320, 240, seed=seed))
    sos = data.index(b"\xff\xda")
    return bit_flipped(data, start=sos + 20, end=len(data) - 2, flips=40, seed=seed)


def jpeg_bitflip_header(seed: int = 0) -> bytes:
    """Damage in the quantisation / Huffman tables and frame header, the magic number left intact."""
    data = jpeg_bytes(photo(320, 240, seed=seed))
    sos = data.index(b"\xff\xda")
    return data[:4] + bytes(b ^ 0x5A for b in data[4:sos]) + data[sos:]


def jpeg_bad_exif(seed: int = 0) -> bytes:
    # An EXIF block whose IFD claims 5 entries and an offset past its end.
    return jpeg_bytes(photo(200, 160, seed=seed), exif=b"Exif\x00\x00MM\x00*\x00\x00\xff\xff\x00\x05\x01\x12")


def jpeg_exif_orientation(value: int, seed: int = 0) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return jpeg_bytes(photo(200, 160, seed=seed), exif=exif.tobytes())


# Animations and pages -------------------------------------------------------------------------------
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]


def frames(n: int, size: int = 32) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), COLOURS[i % 3]) for i in range(n)]


def animated_gif(n: int = 300) -> bytes:
    f = frames(n)
    return encode(f[0], "GIF", save_all=True, append_images=f[1:], duration=20, loop=0)


def animated_webp(n: int = 300) -> bytes:
    f = frames(n)
    return encode(f[0], "WEBP", save_all=True, append_images=f[1:], duration=20, loop=0, lossless=True)


def multipage_tiff(n: int = 3) -> bytes:
    f = frames(n, 48)
    return encode(f[0], "TIFF", save_all=True, append_images=f[1:])


# Colour -------------------------------------------------------------------------------------------
def _s15(x: float) -> bytes:
    return struct.pack(">i", int(round(x * 65536)))


def _pad4(b: bytes) -> bytes:
    return b + b"\x00" * (-len(b) % 4)


def cmyk_icc_profile(rgb_of_cmyk) -> bytes:
    """A minimal ICC v2 CMYK output profile (a 2-point A2B0 lut16 to Lab) mapping each CMYK corner
    (c, m, y, k in {0, 1}) to the sRGB colour `rgb_of_cmyk(c, m, y, k)` -> (r, g, b) in 0..255.

    No CMYK profile ships with Pillow or this system, so the tests make one whose colours differ from
    Pillow's naive conversion: a decoder that honours the profile is then told apart from one that doesn't.
    """
    corners = [(c, m, y, k) for c in (0, 1) for m in (0, 1) for y in (0, 1) for k in (0, 1)]  # first input slowest
    rgb = Image.new("RGB", (len(corners), 1))
    rgb.putdata([tuple(int(v) for v in rgb_of_cmyk(*corner)) for corner in corners])
    lab = ImageCms.profileToProfile(rgb, ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), outputMode="LAB")
    # Pillow keeps LAB's a and b as signed bytes; lut16 wants L in 0..0xFF00 and a, b offset by 128 (x256).
    raw = np.frombuffer(lab.tobytes(), np.uint8).reshape(-1, 3)
    L, a, b = raw[:, 0].astype(int), raw[:, 1].view(np.int8).astype(int) + 128, raw[:, 2].view(np.int8).astype(int) + 128
    clut = b"".join(struct.pack(">HHH", int(x) * 0xFF00 // 255, int(y) * 256, int(z) * 256) for x, y, z in zip(L, a, b))
    identity = b"".join(_s15(1.0 if r == c else 0.0) for r in range(3) for c in range(3))
    ramp = struct.pack(">HH", 0, 0xFFFF)
    a2b0 = b"mft2" + b"\x00" * 4 + bytes([4, 3, 2, 0]) + identity + struct.pack(">HH", 2, 2) + ramp * 4 + clut + ramp * 3
    text = b"dinosearch test CMYK\x00"
    desc = b"desc" + b"\x00" * 4 + struct.pack(">I", len(text)) + text + b"\x00" * 8 + b"\x00" * 3 + b"\x00" * 67
    wtpt = b"XYZ " + b"\x00" * 4 + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    cprt = b"text" + b"\x00" * 4 + b"public domain\x00"
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"cprt", cprt), (b"A2B0", a2b0)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += _pad4(data)
    size = offset + len(body)
    header = (
        struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"prtr" + b"CMYK" + b"Lab "
        + b"\x00" * 12 + b"acsp" + b"\x00" * 24 + struct.pack(">I", 0) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
        + b"\x00" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def naive_rgb(c: int, m: int, y: int, k: int) -> tuple[int, int, int]:
    return (255 * (1 - c) * (1 - k), 255 * (1 - m) * (1 - k), 255 * (1 - y) * (1 - k))


def rotated_rgb(c: int, m: int, y: int, k: int) -> tuple[int, int, int]:
    """The naive colour with its channels rotated: a profile that turns cyan (0,255,255) into yellow (255,255,0)."""
    r, g, b = naive_rgb(c, m, y, k)
    return (g, b, r)


def cmyk_jpeg(icc: bytes | None = None) -> bytes:
    cyan = Image.new("CMYK", (96, 96), (255, 0, 0, 0))
    return encode(cyan, "JPEG", quality=95, **({"icc_profile": icc} if icc is not None else {}))


def grey16_png() -> bytes:
    arr = np.tile(np.linspace(0, 65535, 256, dtype=np.uint16), (64, 1))
    return encode(Image.fromarray(arr), "PNG")


def palette_alpha_png() -> bytes:
    im = Image.new("P", (64, 64), 0)
    im.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    im.paste(1, (32, 0, 64, 64))
    return encode(im, "PNG", transparency=0)


# Not images -----------------------------------------------------------------------------------------
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
DOS_EPS = b"\xc5\xd0\xd3\xc6" + struct.pack("<IIIIII", 30, len(EPS), 0, 0, 0, 0) + b"\xff\xff" + EPS
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PSD = b"8BPS\x00\x01" + b"\x00" * 6 + struct.pack(">HIIHH", 3, 64, 64, 8, 3) + b"\x00" * 64
SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>\n'
HTML = b"<!DOCTYPE html>\n<html><body><img src=x onerror=alert(1)></body></html>\n"
TEXT = b"this is a shopping list, not a photo\n"


def random_bytes(n: int = 4096, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def png_declaring(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def bmp_with_compression(code: int) -> bytes:
    data = bytearray(encode(photo(40, 30), "BMP"))
    data[30:34] = struct.pack("<I", code)
    return bytes(data)


def tiff_with_compression(code: int) -> bytes:
    data = bytearray(encode(photo(40, 30), "TIFF", compression="tiff_lzw"))
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", data[entry : entry + 2])[0] == 259:
            data[entry + 8 : entry + 10] = struct.pack("<H", code)
    return bytes(data)
