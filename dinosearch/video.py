"""Video: an open video file -> the frames worth embedding, each prepared like a photo, or a DecodeError.

Runs inside a decode worker process (sandboxed like photo decoding). Containers and codecs come from
an allowlist, checked by content (magic bytes, then the container FFmpeg recognises), never by the
file name. Frames are sampled every `interval` seconds plus at scene changes (a cheap difference of
tiny greyscale frames that jumps well above the recent motion), at most `max_frames` per file, and turned upright from the display matrix
that phones write instead of rotating pixels.

PyAV (FFmpeg's libraries, bundled in its wheels) is imported only here, only when a video is decoded:
photo indexing never needs it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from .decode import DecodeError, resize_and_crop
from .records import MAX_PIXELS, Preprocess, VideoOptions
from .records import FailureKind as K

INSTALL_HINT = "pip install 'dinosearch[video]'"

# Codecs FFmpeg decodes well and phones, cameras and the web produce (by FFmpeg's codec name).
ALLOWED_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg", "prores"})
SUPPORTED_CODECS = "H.264, HEVC, VP8, VP9, AV1, MPEG-4 Part 2, Motion JPEG, ProRes"
# FFmpeg's demuxer names for the allowed containers.
ALLOWED_CONTAINERS = ("mov", "mp4", "matroska", "webm", "avi")

SCENE_CHECK_SECONDS = 0.2  # how often the scene-change test looks at a frame
SCENE_THRESHOLD = 20.0  # mean absolute difference of 32x18 greyscale frames (0..255) that counts as a cut ...
SCENE_OVER_MOTION = 3.0  # ... when it is also this many times the recent motion (a pan is not a cut)
SCENE_MIN_GAP = 0.25  # seconds between a scene-change frame and the frame taken before it
THUMBNAIL_SIZE = 256  # longest side of the JPEG kept for each frame (the server never decodes videos)
MAX_DURATION = 6 * 3600.0  # seconds: a longer claimed duration is not believed (it sets the timeout)


@dataclass(frozen=True)
class Frame:
    timestamp: float  # seconds from the start of the video
    pixels: np.ndarray  # (crop_height, crop_width, 3) uint8, RGB, like decode.Decoded.pixels
    thumbnail: bytes  # JPEG, longest side THUMBNAIL_SIZE, upright


@dataclass(frozen=True)
class DecodedVideo:
    frames: tuple[Frame, ...]
    width: int  # of the video as displayed (after rotation)
    height: int
    format: str  # the codec, e.g. "H264"
    duration: float  # seconds (0.0 when the container does not say)


def container_of(head: bytes) -> str | None:
    """The allowed container family the first bytes of a file announce, or None."""
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "MP4/QuickTime"
    return None


def available() -> bool:
    """Whether PyAV can be imported."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def decode_video(
    f: BinaryIO,
    pre: Preprocess,
    *,
    options: VideoOptions,
    max_pixels: int = MAX_PIXELS,
    on_duration: Callable[[float], None] | None = None,
) -> DecodedVideo:
    """A seekable binary file -> its sampled frames. Raises DecodeError (not-a-video, unsupported-codec,
    corrupt, too-large, empty). `on_duration(seconds)` is called once the container's duration is
    known, before any frame is decoded (the decode pool extends the file's timeout by it)."""
    head = f.read(12)
    f.seek(0)
    if container_of(head) is None:
        raise DecodeError(K.NOT_A_VIDEO, "not an MP4/MOV, WebM/MKV or AVI video; rename it if it is something else")
    import av

    try:
        container = av.open(f, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise DecodeError(K.CORRUPT, f"the video cannot be opened ({_why(exc)}); it may be truncated — re-export it") from None
    with container:
        if not any(name in container.format.name.split(",") for name in ALLOWED_CONTAINERS):
            raise DecodeError(K.NOT_A_VIDEO, f"{container.format.name} is not an allowed video container")
        if not container.streams:
            raise DecodeError(K.EMPTY, "the video holds no tracks (a 0-second recording?)")
        if not container.streams.video:
            raise DecodeError(K.NOT_A_VIDEO, "the file holds no video track (audio only?)")
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        if codec not in ALLOWED_CODECS:
            raise DecodeError(K.UNSUPPORTED_CODEC, f"the video codec {codec} is not supported ({SUPPORTED_CODECS}); re-encode it")
        if (stream.codec_context.width or 0) * (stream.codec_context.height or 0) > max_pixels:
            raise DecodeError(K.TOO_LARGE, "the video's frames are over the pixel cap")
        duration = _duration(container, stream)
        if on_duration is not None:
            on_duration(duration)
        stream.thread_count = 1  # one decode per worker process: the workers already use every core
        damage: list[str] = []
        frames, size = _sample(container, stream, pre, options, duration, damage)
    if not frames and damage:
        raise DecodeError(K.CORRUPT, f"no frame of the video can be decoded ({damage[0]}); it may be truncated — re-export it")
    if not frames:
        raise DecodeError(K.EMPTY, "the video holds no frames (0 seconds)")
    return DecodedVideo(tuple(frames), size[0], size[1], codec.upper(), duration)


def _duration(container: Any, stream: Any) -> float:
    seconds = 0.0
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000
    return min(max(seconds, 0.0), MAX_DURATION)


def _sample(
    container: Any, stream: Any, pre: Preprocess, options: VideoOptions, duration: float, damage: list[str]
) -> tuple[list[Frame], tuple[int, int]]:
    """Decode in order; keep the frames on the sampling grid and at scene changes."""
    import av

    # A long video keeps its frames spread over all of it rather than crowded at the start.
    interval = max(options.interval, duration / options.max_frames if duration else 0.0)
    frames: list[Frame] = []
    size = (0, 0)
    next_sample = next_check = 0.0
    last_taken, last_small, motion = -1e9, None, None
    for index, frame in enumerate(_decoded(container, stream, damage)):
        t = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 25)
        t = max(t, 0.0)
        scene = False
        if t >= next_check:
            small = frame.reformat(width=32, height=18, format="gray").to_ndarray().astype(np.float32)
            if last_small is not None:
                diff = float(np.abs(small - last_small).mean())
                scene = motion is not None and diff > SCENE_THRESHOLD and diff > SCENE_OVER_MOTION * motion
                # Recent motion: follows a rise at once (a pan starting), decays slowly (a pan ending).
                motion = diff if motion is None else max(diff, 0.8 * motion)
            last_small, next_check = small, t + SCENE_CHECK_SECONDS - 1e-3  # frame times are rounded
        if t >= next_sample or (scene and t - last_taken >= SCENE_MIN_GAP):
            image = _upright(frame.to_image(), _rotation(frame))
            size = image.size
            frames.append(Frame(round(t, 3), resize_and_crop(image, pre), _thumbnail(image)))
            last_taken = t
            while next_sample <= t:
                next_sample += interval
            if len(frames) >= options.max_frames:
                break
    return frames, size


def _decoded(container: Any, stream: Any, damage: list[str]) -> Iterator[Any]:
    """The video's frames in order. Damage stops the reading (a truncated file keeps the frames before
    it); a packet that does not decode is skipped, as players do. What went wrong goes to `damage`."""
    import av

    try:
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except av.FFmpegError as exc:
                damage.append(_why(exc))
    except av.FFmpegError as exc:
        damage.append(_why(exc))
    try:
        yield from stream.codec_context.decode(None)  # the frames the decoder still holds
    except av.FFmpegError as exc:
        damage.append(_why(exc))


def _rotation(frame: Any) -> int:
    try:
        return int(round(frame.rotation or 0)) % 360
    except (AttributeError, TypeError, ValueError):
        return 0


def _upright(image: Image.Image, rotation: int) -> Image.Image:
    """Apply the display matrix's rotation (counterclockwise degrees), as players do."""
    turn = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}.get(rotation)
    return image.transpose(turn) if turn is not None else image


def _thumbnail(image: Image.Image) -> bytes:
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    thumb.save(out, "JPEG", quality=80)
    return out.getvalue()


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__
