"""Decode: formats by content, EXIF orientation, alpha, palette, 16-bit and CMYK converted correctly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dinosearch.decode import DecodeError, decode, load_rgb
from dinosearch.devmodel import DINOV2_PROCESSOR
from dinosearch.records import Preprocess

from . import hostile as H
from .images import jpeg_bytes, photo, with_exif_orientation

PRE = Preprocess(256, 224, 224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_processor_constants_are_dinov2s() -> None:
    assert DINOV2_PROCESSOR["size"] == {"shortest_edge": 256} and DINOV2_PROCESSOR["resample"] == 3


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_decode(fmt: str) -> None:
    d = decode(encode(photo(300, 200), fmt), PRE)
    assert d.pixels.shape == (224, 224, 3) and d.pixels.dtype == np.uint8
    assert (d.width, d.height) == (300, 200)


def test_heic_decodes() -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    try:
        data = encode(photo(300, 200), "HEIF")
    except (KeyError, OSError) as exc:  # an encoder-less libheif build
        pytest.skip(f"no HEIF encoder here: {exc}")
    assert decode(data, PRE).pixels.shape == (224, 224, 3)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation: int) -> None:
    upright = photo(400, 300, seed=1)
    im, size, fmt = load_rgb(with_exif_orientation(upright, orientation))
    assert size == (400, 300) and im.size == (400, 300) and fmt == "JPEG"
    diff = np.abs(np.asarray(im, np.float32) - np.asarray(upright, np.float32)).mean()
    assert diff < 6  # only JPEG noise left


def test_malformed_exif_does_not_fail_the_file() -> None:
    data = jpeg_bytes(photo(300, 200), exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12")
    assert decode(data, PRE).pixels.shape == (224, 224, 3)


def test_alpha_is_composited_on_white() -> None:
    im = Image.new("RGBA", (300, 300), (255, 0, 0, 0))  # fully transparent red
    im.paste((0, 0, 255, 255), (100, 100, 200, 200))
    rgb, _, _ = load_rgb(encode(im, "PNG"))
    assert rgb.getpixel((10, 10)) == (255, 255, 255)
    assert rgb.getpixel((150, 150)) == (0, 0, 255)


def test_palette_with_transparency() -> None:
    im = Image.new("P", (100, 100), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(1, (50, 0, 100, 100))
    rgb, _, _ = load_rgb(encode(im, "PNG", transparency=0))
    assert rgb.getpixel((10, 10)) == (255, 255, 255) and rgb.getpixel((80, 10)) == (0, 255, 0)


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    arr = np.full((64, 64), 32768, np.uint16)  # mid grey in 16 bits
    rgb, _, _ = load_rgb(encode(Image.fromarray(arr), "PNG"))
    assert abs(rgb.getpixel((5, 5))[0] - 128) <= 1


def test_cmyk_jpeg_is_converted() -> None:
    cmyk = Image.new("CMYK", (200, 200), (0, 255, 255, 0))  # pure red in CMYK
    rgb, _, _ = load_rgb(encode(cmyk, "JPEG", quality=95))
    r, g, b = rgb.getpixel((100, 100))
    assert r > 200 and g < 60 and b < 60


def test_animated_gif_first_frame_only() -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    rgb, _, _ = load_rgb(buf.getvalue())
    assert rgb.getpixel((5, 5))[0] > 200


@pytest.mark.parametrize(
    "data,kind",
    [
        (b"", "empty"),
        (b"hello, I am text", "not-an-image"),
        (b"%PDF-1.4 fake", "not-an-image"),
        (b"8BPS\x00\x01" + b"\x00" * 100, "not-an-image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "not-an-image"),
    ],
)
def test_non_images_fail_with_a_kind(data: bytes, kind: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode(data, PRE)
    assert err.value.kind == kind


def test_truncated_jpeg_is_corrupt() -> None:
    data = jpeg_bytes(photo(300, 200))
    with pytest.raises(DecodeError) as err:
        decode(data[: len(data) // 3], PRE)
    assert err.value.kind == "corrupt"


def test_pixel_cap_is_checked_before_decoding() -> None:
    with pytest.raises(DecodeError) as err:
        decode(encode(photo(300, 200), "PNG"), PRE, max_pixels=10_000)
    assert err.value.kind == "too-large" and "300x200" in err.value.message


def test_jpeg_draft_keeps_enough_resolution() -> None:
    big = photo(4032, 3024, seed=2)
    im, size, _ = load_rgb(jpeg_bytes(big), min_side=256)
    assert size == (4032, 3024) and min(im.size) >= 256 and im.size[0] < 4032


def _without_end_marker(data: bytes) -> bytes:
    assert data.endswith(b"\xff\xd9")
    return data[:-2]


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_missing_only_its_end_marker_decodes_whole(progressive: bool) -> None:
    im = photo(320, 240, seed=3)
    data = jpeg_bytes(im, progressive=progressive)
    whole = decode(data, PRE).pixels
    assert np.array_equal(decode(_without_end_marker(data), PRE).pixels, whole)


def test_jpeg_with_missing_scan_lines_stays_corrupt() -> None:
    data = jpeg_bytes(photo(320, 240, seed=3))
    with pytest.raises(DecodeError) as err:
        decode(data[: len(data) // 2], PRE)
    assert err.value.kind == "corrupt"


@pytest.mark.parametrize("max_pixels", [None, 100_000_000])
def test_too_large_names_the_size_the_limit_and_the_knob(max_pixels: int | None) -> None:
    """20000x10000 is over Pillow's own bomb limit too: the message is still ours, with numbers."""
    from dinosearch.decode import MAX_PIXELS

    limit = max_pixels or MAX_PIXELS
    with pytest.raises(DecodeError) as err:
        decode(H.png_declaring(20000, 10000), PRE, max_pixels=limit)
    assert err.value.kind == "too-large"
    assert "20000x10000" in err.value.message and str(limit) in err.value.message
    assert "--max-pixels" in err.value.message


@pytest.mark.parametrize("data", [H.bmp_with_compression(4), H.tiff_with_compression(50001)], ids=["bmp-jpeg", "tiff-webp"])
def test_valid_files_of_an_unsupported_variant_are_not_called_corrupt(data: bytes) -> None:
    with pytest.raises(DecodeError) as err:
        decode(data, PRE)
    assert err.value.kind == "unsupported", err.value.message
    assert "not damaged" in err.value.message and "re-export" not in err.value.message


def test_a_limit_above_pillows_own_is_the_one_in_effect() -> None:
    from dinosearch.decode import open_image

    assert open_image(H.png_declaring(20000, 10000), max_pixels=300_000_000).size == (20000, 10000)
