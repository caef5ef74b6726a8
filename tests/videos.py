"""Generated test videos (PyAV): a few seconds of small frames whose content changes at known times."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

from .images import photo

SIZE = (96, 64)  # width, height: small, so encoding and decoding take milliseconds


def stills(n: int, seed: int = 100) -> list[Image.Image]:
    """Distinct photo-like stills, one per scene."""
    return [photo(SIZE[0], SIZE[1], seed=seed + i) for i in range(n)]


def make_video(
    path: Path,
    scenes: list[tuple[float, Image.Image]],
    *,
    seconds: float,
    fps: int = 10,
    codec: str = "libx264",
    faststart: bool = True,
) -> Path:
    """A video showing each scene's still from its start time (seconds) on, for `seconds` in all."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "+faststart"} if faststart and path.suffix in (".mp4", ".mov", ".m4v") else {}
    with av.open(str(path), mode="w", options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = scenes[0][1].size
        stream.pix_fmt = "yuv420p" if codec not in ("ffv1",) else "yuv444p"
        for i in range(int(round(seconds * fps))):
            t = i / fps
            still = [im for start, im in scenes if start <= t + 1e-9][-1]
            frame = av.VideoFrame.from_ndarray(np.asarray(still.convert("RGB")), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def empty_video(path: Path) -> Path:
    """An MP4 container with a video track and no frames at all (0 seconds)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        out.start_encoding()  # writes the header: a valid container whose track has no frames
    return path


# The tkhd matrix of a phone held upright: the stored landscape frames are shown turned 90 degrees
# clockwise (what FFmpeg reads as a display matrix of -90 degrees).
_ROTATE_90_CW = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)


def rotate_like_a_phone(path: Path) -> Path:
    """Patch the MP4's track header matrix in place, as phones record portrait video."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    assert at > 0, "no track header"
    version = data[at + 4]
    # tkhd: version/flags 4, times 8 or 16, track id 4, reserved 4, duration 4 or 8, reserved 8,
    # layer 2, group 2, volume 2, reserved 2, then the 3x3 matrix (36 bytes).
    offset = at + 4 + 4 + (16 if version == 1 else 8) + 4 + 4 + (8 if version == 1 else 4) + 8 + 8
    data[offset : offset + 36] = _ROTATE_90_CW
    path.write_bytes(bytes(data))
    return path
