"""The body of a decode worker process. Kept apart so a spawned worker imports only Pillow and NumPy."""

from __future__ import annotations

import multiprocessing
import os
import warnings

if multiprocessing.parent_process() is not None:
    # In the worker only: one decode per process, no BLAS or OpenMP thread pools fighting the model.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    # Ctrl-C reaches the whole process group: the parent stops the run and the workers; a worker's own
    # KeyboardInterrupt traceback would only clutter the terminal.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)

from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from .decode import CodecOutput, DecodeError, Decoded, decode  # noqa: E402
from .read import Unreadable, Vanished, content_hash, hash_fd, open_regular, read_whole  # noqa: E402
from .records import MAX_PIXELS, FailureKind, Preprocess, VideoOptions  # noqa: E402
from .video import DecodedVideo, decode_video  # noqa: E402


VANISHED = "vanished"  # the failure kind of a file that is gone: not recorded as a failure


# The messages between the pool (workers.py) and a worker. A request is the file's bytes, or its path
# (the worker then reads and hashes it itself); the worker answers each with exactly one reply.
@dataclass(frozen=True)
class FileIdentity:
    """What the worker read: size and mtime from the descriptor it read the bytes through, and their hash."""

    size: int
    mtime_ns: int
    content_hash: str


@dataclass(frozen=True)
class VideoRequest:
    """A video to sample into frames: always by path (videos are read in chunks, never whole)."""

    path: str
    options: VideoOptions


@dataclass(frozen=True)
class VideoDuration:
    """Sent before the reply to a VideoRequest, once the container says how long the video is: the
    pool extends that file's timeout by it."""

    seconds: float


@dataclass(frozen=True)
class WorkerDecoded:
    decoded: Decoded | DecodedVideo
    read: FileIdentity | None  # set when the request was a path


@dataclass(frozen=True)
class WorkerFailed:
    kind: str  # a FailureKind value, or VANISHED
    message: str


def _limit_memory(limit: int | None) -> None:
    if not limit:
        return
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # not on this platform: the per-file timeout still holds
        pass


READY = "ready"  # a worker's first message: imports done, memory limited, files welcome

# Test-only fault injection. Only when DINOSEARCH_TEST_DECODE_FAULTS=1 is in the environment, a file
# whose bytes start with FAULT_MAGIC makes this worker segfault, abort, hang or exhaust its memory, as
# a hostile file could make a codec do: the tests prove that such a file costs that file only. Without
# the variable those bytes are an ordinary file that is not an image.
FAULT_ENV = "DINOSEARCH_TEST_DECODE_FAULTS"
FAULT_MAGIC = b"DINOSEARCH-TEST-FAULT:"


def _inject_fault(data: bytes) -> None:
    kind = data[len(FAULT_MAGIC) :].split(b"\n", 1)[0].strip()
    if kind == b"segfault":
        import ctypes

        ctypes.string_at(0)  # read address 0: SIGSEGV, as a codec bug would
    elif kind == b"abort":
        os.abort()  # SIGABRT, as a failed assertion or malloc check in C would
    elif kind == b"hang":
        while True:  # a busy loop that never returns, never reads the pipe
            pass
    elif kind == b"oom":
        hog = []
        while True:  # grows until the worker's memory limit stops it
            hog.append(b"\x01" * (16 << 20))


def worker_main(conn: Any, pre: Preprocess, max_pixels: int = MAX_PIXELS, memory_limit: int | None = None) -> None:
    """Decode requests (bytes or a path) until a None arrives; answer each with exactly one reply.

    A path is read and hashed here: the indexing process never holds those bytes, so it is not the
    bottleneck when the model is fast.
    """
    _limit_memory(memory_limit)
    codec = CodecOutput()
    # Codec warnings (corrupt EXIF, odd chunks) would interleave with the progress bar; what matters
    # about a file is its result, and a failure is recorded with its reason.
    warnings.simplefilter("ignore")
    faults = os.environ.get(FAULT_ENV) == "1"
    try:
        conn.send(READY)  # imports done: a file's timeout starts counting from here
    except (OSError, ValueError):
        return
    while True:
        try:
            source = conn.recv()
        except (EOFError, OSError):
            return
        if source is None:
            return
        codec.clear()
        reply = _decode_one(source, pre, max_pixels, faults, conn)
        source = None  # don't hold the bytes while idle
        said = codec.said() if isinstance(reply, WorkerFailed) and reply.kind != VANISHED else ""
        if said:  # what the codec wrote to stderr, instead of the terminal: it can say what is wrong
            reply = WorkerFailed(reply.kind, f"{reply.message} (the decoder said: {said})")
        conn.send(reply)


def _decode_one(
    source: bytes | str | VideoRequest, pre: Preprocess, max_pixels: int, faults: bool, conn: Any
) -> WorkerDecoded | WorkerFailed:
    read = None
    try:
        if isinstance(source, VideoRequest):
            return _decode_video(source, pre, max_pixels, conn)
        if isinstance(source, str):
            f = read_whole(source)
            data = f.data
            read = FileIdentity(f.size, f.mtime_ns, content_hash(data))
        else:
            data = source
        if faults and data.startswith(FAULT_MAGIC):
            _inject_fault(data)
        return WorkerDecoded(decode(data, pre, max_pixels=max_pixels), read)
    except Vanished:
        return WorkerFailed(VANISHED, "")
    except (Unreadable, DecodeError) as exc:
        return WorkerFailed(exc.kind, exc.message)
    except MemoryError:
        return WorkerFailed(FailureKind.TOO_LARGE, "ran out of memory decoding this file; downscale it and try again")
    except ImportError:  # PyAV missing in the worker: `index --video` checks for it before any file
        return WorkerFailed(FailureKind.CRASHED, "videos need PyAV: pip install 'dinosearch[video]'")
    except Exception as exc:  # noqa: BLE001 - a codec bug is still only this file's failure
        return WorkerFailed(FailureKind.CORRUPT, f"the decoder failed ({type(exc).__name__}); re-export the file")


def _decode_video(request: VideoRequest, pre: Preprocess, max_pixels: int, conn: Any) -> WorkerDecoded:
    """Hash the video through one descriptor, then decode its frames from the same descriptor."""
    fd, st = open_regular(request.path)
    with os.fdopen(fd, "rb") as f:
        read = FileIdentity(st.st_size, st.st_mtime_ns, hash_fd(fd))
        f.seek(0)
        decoded = decode_video(f, pre, options=request.options, max_pixels=max_pixels,
                               on_duration=lambda seconds: conn.send(VideoDuration(seconds)))
    return WorkerDecoded(decoded, read)
