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

from typing import Any  # noqa: E402

from .decode import MAX_PIXELS, CodecOutput, DecodeError, decode  # noqa: E402
from .read import Unreadable, Vanished, content_hash, read_whole  # noqa: E402
from .records import Preprocess  # noqa: E402

VANISHED = "vanished"  # the failure kind of a file that is gone: not recorded as a failure


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
    """Decode (task_id, source) messages until a None arrives; answer each with exactly one message.

    source: the file's bytes, or its path, which this worker then reads and hashes itself: the
    indexing process never holds those bytes, so it is not the bottleneck when the model is fast.
    Success: (task_id, True, pixels, width, height, format, read), read = (size, mtime_ns, hash) for
    a path, else None. Failure: (task_id, False, kind, message).
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
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, source = msg
        read = None
        codec.clear()
        try:
            if isinstance(source, str):
                f = read_whole(source)
                data = f.data
                read = (f.size, f.mtime_ns, content_hash(data))
            else:
                data = source
            if faults and data.startswith(FAULT_MAGIC):
                _inject_fault(data)
            d = decode(data, pre, max_pixels=max_pixels)
            reply: tuple = (task_id, True, d.pixels, d.width, d.height, d.format, read)
        except Vanished:
            reply = (task_id, False, VANISHED, "")
        except Unreadable as exc:
            reply = (task_id, False, exc.kind, exc.message)
        except DecodeError as exc:
            reply = (task_id, False, exc.kind, exc.message)
        except MemoryError:
            reply = (task_id, False, "too-large", "ran out of memory decoding this image; downscale it and try again")
        except Exception as exc:  # noqa: BLE001 - a codec bug is still only this file's failure
            reply = (task_id, False, "corrupt", f"the decoder failed ({type(exc).__name__}); re-export the file")
        data = source = None  # type: ignore[assignment]  # don't hold the bytes while idle
        said = codec.said() if not reply[1] and reply[2] != VANISHED else ""
        if said:
            reply = (*reply[:3], f"{reply[3]} (the decoder said: {said})")
        conn.send(reply)
