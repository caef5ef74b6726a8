"""Decode in worker processes: a crash, hang or memory blow-up on one file costs that file only.

Each worker is a spawned process holding one file at a time. A dispatcher thread feeds them, watches
their deadlines and exits, replaces any that die or hang, and turns every task into exactly one result.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from ._decode_worker import worker_main
from .decode import MAX_PIXELS
from .records import Preprocess

DEFAULT_TIMEOUT = 60.0  # seconds one file may take to decode
DEFAULT_MEMORY_LIMIT = 4 << 30  # address space of one worker, bytes


@dataclass(frozen=True)
class Decoded:
    task: Any
    pixels: np.ndarray
    width: int
    height: int
    format: str


@dataclass(frozen=True)
class DecodeFailed:
    task: Any
    error: str
    message: str


class _Worker:
    def __init__(self, ctx: Any, args: tuple):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=worker_main, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        self.task: Any = None
        self.deadline = 0.0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class DecodePool:
    """Submit (task, bytes); read Decoded / DecodeFailed records from `results`, one per task."""

    def __init__(
        self,
        pre: Preprocess,
        *,
        workers: int = 2,
        timeout: float = DEFAULT_TIMEOUT,
        memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
        max_pixels: int = MAX_PIXELS,
        max_ready: int = 64,
        results: queue.Queue | None = None,
    ):
        self._ctx = multiprocessing.get_context("spawn")
        self._args = (pre, max_pixels, memory_limit)
        self._timeout = timeout
        self._max_ready = max_ready  # backpressure: results waiting for the model, at most
        self._inbox: queue.Queue = queue.Queue(maxsize=max(2, workers))
        self.results: queue.Queue = results if results is not None else queue.Queue()
        self._workers = [_Worker(self._ctx, self._args) for _ in range(max(1, workers))]
        self._retry: list[tuple[Any, bytes]] = []  # tasks whose worker died before taking them
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._dispatch, name="dinosearch-decode", daemon=True)
        self._thread.start()
        self.replaced = 0  # workers replaced after a crash or a timeout

    def submit(self, task: Any, data: bytes) -> None:
        """Blocks while every worker is busy and the inbox is full (bounded memory)."""
        while not self._stop.is_set():
            try:
                self._inbox.put((task, data), timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        for w in self._workers:
            w.proc.join(timeout=2)
            w.kill()

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _replace(self, i: int) -> None:
        self._workers[i].kill()
        self._workers[i] = _Worker(self._ctx, self._args)
        self.replaced += 1

    def _dispatch(self) -> None:
        while not self._stop.is_set():
            # Hand a task to every idle worker, unless the model is behind and results are piling up.
            for w in self._workers:
                if w.task is None and self.results.qsize() < self._max_ready:
                    try:
                        task, data = self._retry.pop() if self._retry else self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    try:
                        w.conn.send((0, data))
                        w.task, w.deadline = task, time.monotonic() + self._timeout
                    except (OSError, ValueError):  # the worker died while idle: retry on a fresh one
                        self._replace(self._workers.index(w))
                        self._retry.append((task, data))
            busy = [w for w in self._workers if w.task is not None]
            if not busy:
                time.sleep(0.005)
                continue
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=0.05)
            now = time.monotonic()
            for i, w in enumerate(self._workers):
                if w.task is None:
                    continue
                if w.conn in ready:
                    try:
                        reply = w.conn.recv()
                    except (EOFError, OSError):
                        reply = None
                    if reply is not None:
                        task, w.task = w.task, None
                        if reply[1]:
                            self.results.put(Decoded(task, reply[2], reply[3], reply[4], reply[5]))
                        else:
                            self.results.put(DecodeFailed(task, reply[2], reply[3]))
                        continue
                if w.conn in ready or w.proc.sentinel in ready or not w.proc.is_alive():
                    code = w.proc.exitcode
                    self.results.put(
                        DecodeFailed(
                            w.task,
                            "crashed",
                            f"the decoder crashed on this file (exit {code}); it may be corrupt or hostile — re-export it",
                        )
                    )
                    w.task = None
                    self._replace(i)
                elif now > w.deadline:
                    self.results.put(
                        DecodeFailed(
                            w.task,
                            "timeout",
                            f"decoding took longer than {self._timeout:.0f} s and was stopped; re-export the file",
                        )
                    )
                    w.task = None
                    self._replace(i)
