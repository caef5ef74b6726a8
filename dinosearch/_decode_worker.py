"""The body of a decode worker process. Kept apart so a spawned worker imports only Pillow and NumPy."""

from __future__ import annotations

import multiprocessing
import os

if multiprocessing.parent_process() is not None:
    # In the worker only: one decode per process, no BLAS or OpenMP thread pools fighting the model.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"

from typing import Any  # noqa: E402

from .decode import MAX_PIXELS, DecodeError, decode  # noqa: E402
from .records import Preprocess  # noqa: E402


def _limit_memory(limit: int | None) -> None:
    if not limit:
        return
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # not on this platform: the per-file timeout still holds
        pass


def worker_main(conn: Any, pre: Preprocess, max_pixels: int = MAX_PIXELS, memory_limit: int | None = None) -> None:
    """Decode (task_id, bytes) messages until a None arrives; answer each with exactly one message."""
    _limit_memory(memory_limit)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, data = msg
        try:
            d = decode(data, pre, max_pixels=max_pixels)
            reply: tuple = (task_id, True, d.pixels, d.width, d.height, d.format)
        except DecodeError as exc:
            reply = (task_id, False, exc.kind, exc.message)
        except MemoryError:
            reply = (task_id, False, "too-large", "ran out of memory decoding this image; downscale it to index it")
        except Exception as exc:  # noqa: BLE001 - a codec bug is still only this file's failure
            reply = (task_id, False, "corrupt", f"the decoder failed ({type(exc).__name__}); re-export the file")
        del data
        conn.send(reply)
