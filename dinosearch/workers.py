"""Decode in worker processes: a crash, hang or memory blow-up on one file costs that file only.

Each worker is a spawned process decoding one file at a time, in the order it was sent them. A
dispatcher thread feeds them, watches their deadlines and exits, replaces any that die or hang, and
turns every task into exactly one result.

A busy worker also holds the path of its next file (PIPELINE_DEPTH), so that it starts that file the
moment it answers, instead of idling until the dispatcher thread gets the GIL back from the model's
thread: with a fast model that wait cost up to half of the decoders' time. Isolation is unchanged: a
worker decodes in order, so the oldest file it has not answered is the one it was on when it crashed
or hung; the files behind it go to another worker, untouched.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Generic, TypeVar

from ._decode_worker import READY, FileIdentity, VideoDuration, VideoRequest, WorkerDecoded, WorkerFailed, worker_main
from .decode import Decoded
from .video import DecodedVideo
from .records import MAX_PIXELS, FailureKind, Preprocess

DEFAULT_TIMEOUT = 60.0  # seconds one file may take to decode
DEFAULT_MEMORY_LIMIT = 4 << 30  # address space of one worker, bytes
STARTUP_TIMEOUT = 120.0  # seconds a new worker may take to start (not counted against any file)
MAX_STARTUP_FAILURES = 3  # workers dying before they are ready, in a row, before files are failed
# A video's timeout: the file's timeout plus this many seconds per second of video. Decoding 1080p H.264
# in order on one busy core ran at ~2x real time (see the video benchmark); 4K or a loaded machine is
# slower, and a timeout must only stop a decoder that is stuck.
VIDEO_SECONDS_PER_SECOND = 4.0
# Files a worker holds: the one it decodes, and paths queued behind it. Only a path waits in the pipe
# (a few hundred bytes): a file's bytes could fill it, and the dispatcher would block on the send.
PIPELINE_DEPTH = 2


T = TypeVar("T")  # the caller's task: whatever it needs to know which file a result is for


@dataclass(frozen=True)
class DecodeDone(Generic[T]):
    task: T
    decoded: Decoded | DecodedVideo
    read: FileIdentity | None = None  # when the worker read the file itself: the identity of those bytes


@dataclass(frozen=True)
class DecodeFailed(Generic[T]):
    task: T
    error: str  # a FailureKind value, or _decode_worker.VANISHED
    message: str


_SPAWN_LOCK = threading.Lock()


class _Worker:
    def __init__(self, ctx: Any, args: tuple):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=worker_main, args=(child, *args), daemon=True)
        # The new process inherits a temporary file as its stderr: what it prints before it is ready (a
        # traceback when it cannot start) is read back to name the cause, never sprayed on the terminal.
        self.log = tempfile.TemporaryFile()
        with _SPAWN_LOCK:
            saved = os.dup(2)
            try:
                os.dup2(self.log.fileno(), 2)
                self.proc.start()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        child.close()
        self.sent: deque[tuple[Any, Any]] = deque()  # (task, source) sent and not answered, oldest first
        self.limit = 0.0  # seconds the oldest task may take (a video's grows with its duration)
        # Until the worker says it is ready (imports done), its deadline is a startup deadline, and it
        # is given no file: a file's timeout never includes a spawn on a busy machine.
        self.ready = False
        self.deadline = time.monotonic() + STARTUP_TIMEOUT

    @property
    def task(self) -> Any:
        """The task it is decoding (the oldest it has not answered), or None when idle."""
        return self.sent[0][0] if self.sent else None

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()
        self.log.close()

    def startup_output(self) -> str:
        """What the process printed before it was ready (the traceback of a failed start), its end."""
        try:
            self.log.seek(0)
            return self.log.read()[-8192:].decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def exit_description(self) -> str:
        self.proc.join(timeout=2)  # reap it, so that its exit code is known
        code = self.proc.exitcode
        if code is None:
            return "it stopped answering"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"


class DecodePool(Generic[T]):
    """Submit (task, bytes or path); read DecodeDone / DecodeFailed records from `results`, one per task.

    Or give it a queue of tasks (`inbox`) and how to get each one's bytes, path or VideoRequest
    (`source`): it then takes them from that queue itself, with no thread between the producer and
    the workers, and `submit` is not used."""

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
        inbox: queue.Queue | None = None,
        source: Callable[[T], bytes | str | VideoRequest] | None = None,
    ):
        if (inbox is None) != (source is None):
            raise ValueError("inbox and source go together")
        self._ctx = multiprocessing.get_context("spawn")
        self._args = (pre, max_pixels, memory_limit)
        self._timeout = timeout
        self._max_ready = max_ready  # backpressure: results waiting for the model, at most
        self._inbox: queue.Queue = inbox if inbox is not None else queue.Queue(maxsize=max(2, workers))
        self._source = source
        self.results: queue.Queue = results if results is not None else queue.Queue()
        self._workers = [_Worker(self._ctx, self._args) for _ in range(max(1, workers))]
        self._retry: list[tuple[T, bytes | str]] = []  # tasks whose worker died before taking them
        self._next: tuple[T, Any] | None = None  # taken from the inbox, not yet sent
        self._stop = threading.Event()
        self.replaced = 0  # workers replaced after a crash or a timeout
        self._startup_failures = 0  # workers in a row that died before they were ready
        self._broken: str | None = None  # set when workers cannot start at all
        self._thread = threading.Thread(target=self._dispatch, name="dinosearch-decode", daemon=True)
        self._thread.start()

    @property
    def broken(self) -> str | None:
        """Why no decode worker can start at all (every file then fails with this), else None."""
        return self._broken

    def submit(self, task: T, source: bytes | str | VideoRequest) -> None:
        """Decode `source`: a file's bytes, or its path (read and hashed by the worker; see DecodeDone.read),
        or a video to sample (DecodeDone.decoded is then a DecodedVideo).

        Blocks while every worker is busy and the inbox is full (bounded memory)."""
        while not self._stop.is_set():
            try:
                self._inbox.put((task, source), timeout=0.2)
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
            if self._broken is not None:  # no worker can start: every file fails, quickly, with why
                nxt = self._take()
                if nxt is None:
                    time.sleep(0.05)
                    continue
                task, _ = nxt
                self._next = None
                self.results.put(DecodeFailed(task, FailureKind.CRASHED, self._broken))
                continue
            self._hand_out()
            watched = [w for w in self._workers if w.task is not None or not w.ready]
            if not watched:
                time.sleep(0.005)
                continue
            self._collect(wait([w.conn for w in watched] + [w.proc.sentinel for w in watched], timeout=0.05))

    def _take(self) -> tuple[T, Any] | None:
        """The next task to send (kept until it is sent): a retried one first, else the inbox's."""
        if self._next is None:
            if self._retry:
                self._next = self._retry.pop()
            else:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    return None
                self._next = item if self._source is None else (item, self._source(item))
        return self._next

    def _hand_out(self) -> None:
        """Tasks to every ready worker with room, unless the model is behind and results pile up. A
        worker still starting gets nothing: a send could block on it, and its startup must not count
        against any file's timeout. A busy worker is only sent a path (see PIPELINE_DEPTH)."""
        for i, w in enumerate(self._workers):
            while w.ready and len(w.sent) < PIPELINE_DEPTH and self.results.qsize() < self._max_ready:
                nxt = self._take()
                if nxt is None:
                    return
                if w.sent and not isinstance(nxt[1], str):
                    break
                try:
                    w.conn.send(nxt[1])
                except (OSError, ValueError):  # the worker died; _collect answers for what it held
                    if not w.sent:
                        self._replace(i)
                    break
                self._next = None
                if not w.sent:
                    w.deadline, w.limit = time.monotonic() + self._timeout, self._timeout
                w.sent.append(nxt)

    def _collect(self, ready: list[Any]) -> None:
        """Replies, exits and deadlines of the workers: every task ends in exactly one result."""
        now = time.monotonic()
        for i, w in enumerate(self._workers):
            if self._broken is not None:
                break
            if w.task is None and w.ready:
                continue
            if w.conn in ready:
                try:
                    reply = w.conn.recv()
                except (EOFError, OSError):
                    reply = None
                if reply == READY and not w.ready:
                    w.ready = True
                    self._startup_failures = 0
                    continue
                if isinstance(reply, VideoDuration) and w.task is not None:
                    w.limit = self._timeout + VIDEO_SECONDS_PER_SECOND * reply.seconds
                    w.deadline = now + w.limit
                    continue
                if reply is not None and w.task is not None:
                    task, _ = w.sent.popleft()
                    self.results.put(_result(task, reply))
                    if w.sent:  # it goes on to the next file it holds: that file's clock starts
                        w.deadline, w.limit = now + self._timeout, self._timeout
                    continue
            dead = w.conn in ready or w.proc.sentinel in ready or not w.proc.is_alive()
            if not w.ready and (dead or now > w.deadline):
                why = w.exit_description() if dead else f"not ready within {STARTUP_TIMEOUT:.0f} s"
                self._startup_failed(i, _startup_failure(why, w.startup_output()))
            elif dead:
                self.results.put(
                    DecodeFailed(
                        w.task,
                        FailureKind.CRASHED,
                        f"the decoder crashed on this file ({w.exit_description()}); "
                        "it may be corrupt or hostile — re-export it",
                    )
                )
                self._requeue_behind(w)
                self._replace(i)
            elif now > w.deadline:
                self.results.put(
                    DecodeFailed(
                        w.task,
                        FailureKind.TIMEOUT,
                        f"decoding took longer than {w.limit:g} s and was stopped; "
                        "the file may be hostile — re-export it",
                    )
                )
                self._requeue_behind(w)
                self._replace(i)

    def _requeue_behind(self, w: _Worker) -> None:
        """The files a crashed or stopped worker held behind the one it was on: never started, so
        they go to another worker, as they are."""
        w.sent.popleft()
        self._retry.extend(reversed(w.sent))  # popped from the end: the oldest goes first
        w.sent.clear()

    def _startup_failed(self, i: int, why: str) -> None:
        """A worker died (or hung) before it was ready: no file is to blame, unless none can start at all."""
        self._startup_failures += 1
        if self._startup_failures > MAX_STARTUP_FAILURES:
            # Not one file's fault: stop spawning, and fail every file with the reason (an index run
            # stops with it and records nothing against the files).
            self._broken = why
            for w in self._workers:
                for task, _ in w.sent:
                    self.results.put(DecodeFailed(task, FailureKind.CRASHED, self._broken))
                w.sent.clear()
                w.kill()
            return
        self._replace(i)


def _result(task: T, reply: WorkerDecoded | WorkerFailed) -> DecodeDone[T] | DecodeFailed[T]:
    if isinstance(reply, WorkerDecoded):
        return DecodeDone(task, reply.decoded, reply.read)
    return DecodeFailed(task, reply.kind, reply.message)


def _startup_failure(why: str, output: str) -> str:
    """A worker that could not start -> a message naming the likely cause and the fix."""
    import sys

    # A spawned worker imports the main script again; a script without a main guard then runs its
    # indexing code in the worker, which fails there, with the script's module level in its traceback.
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    if script and f'File "{script}"' in output and "in <module>" in output:
        return (
            f"decode worker processes import the main script ({os.path.basename(script)}) again, and it starts "
            "indexing when imported; put its code under `if __name__ == \"__main__\":`"
        )
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    said = f": {lines[-1][:200]}" if lines else ""
    return f"a decode worker could not start ({why}{said}); check the installation and run again"
