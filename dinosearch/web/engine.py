"""The index and the model behind the server, kept off the event loop.

- Index reads (search, similar, stats) run in worker threads under one lock: `Index` reloads a new
  vector generation lazily, and two threads must not do that at once.
- Uploads: the index's one query path first (query.QueryVectors.stored: an already indexed file reuses
  its stored vector and never touches the model); otherwise decode in a sandboxed process
  (dinosearch.workers.DecodePool), then one model thread embeds whatever has queued up meanwhile as
  one batch: what is web-specific here is that micro-batching, the admission and the bounded queue. At most `queue_size` uploads are in
  flight; the next one gets `Overloaded` (the web layer answers 503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import numpy as np

from ..api import Index
from ..decode import DecodeError, decode
from ..records import Preprocess
from ..workers import DecodeFailed

log = logging.getLogger("dinosearch.web")
T = TypeVar("T")


class Overloaded(Exception):
    """Too many uploads in flight, or one waited longer than the request timeout."""


class ModelUnavailable(Exception):
    """The model could not be loaded or failed on a batch; the real reason is in the server log."""


@dataclass
class _Job:
    pixels: np.ndarray  # (h, w, 3) uint8
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class QueryEngine:
    def __init__(
        self,
        index: Index,
        *,
        queue_size: int = 32,
        batch_size: int | None = None,
        decode_workers: int = 1,
        decode_timeout: float = 20.0,
        max_pixels: int = 50_000_000,
        request_timeout: float = 60.0,
    ):
        self.index = index
        self.queue_size = queue_size
        self.max_pixels = max_pixels
        self.request_timeout = request_timeout
        self._batch_size = batch_size
        self._decode_workers = decode_workers
        self._decode_timeout = decode_timeout
        self._lock = threading.Lock()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()  # unbounded: admission below bounds it
        self._pending = 0  # uploads admitted; only touched on the event loop
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._pre: Preprocess | None = None
        self._pool: Any = None  # DecodePool, started once the model says how to preprocess
        self._deliverer: threading.Thread | None = None  # moves the pool's results to their requests
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._task_ids = itertools.count(1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._model_loop, name="dinosearch-model", daemon=True)
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)  # recent, for tests and benches

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._jobs.put(None)
        self._thread.join(timeout=10)
        # Joined too: a daemon thread still running at interpreter exit is killed inside whatever C++
        # it is in, and torch then aborts the process ("terminate called without an active exception").
        if self._deliverer is not None:
            self._deliverer.join(timeout=10)
        if self._pool is not None:
            self._pool.close()

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def queued(self) -> int:
        """Decoded uploads waiting for the model thread."""
        return self._jobs.qsize()

    # index reads --------------------------------------------------------------------------------
    async def read(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run an Index call in a worker thread, one at a time."""

        def locked() -> T:
            with self._lock:
                return fn(*args, **kwargs)

        return await anyio.to_thread.run_sync(locked)

    # uploads ------------------------------------------------------------------------------------
    async def vector_of_upload(self, data: bytes) -> np.ndarray:
        """Image file bytes -> (dim,) unit vector. Raises DecodeError, Overloaded or ModelUnavailable."""
        if self._pending >= self.queue_size:
            raise Overloaded()  # refuse at once: under overload even the hash lookup competes for the CPU
        # Hashing 20 MB takes tens of ms: in the thread too, not on the event loop.
        stored = await anyio.to_thread.run_sync(self.index.queries.stored, data)
        if stored is not None:
            return stored
        return await self._admitted(data, embed=True)

    async def pixels_of_upload(self, data: bytes) -> np.ndarray:
        """Image file bytes -> model-ready (h, w, 3) uint8 pixels, decoded in the sandbox as a search's
        are, without the model (explain runs it). Raises DecodeError, Overloaded or ModelUnavailable."""
        return await self._admitted(data, embed=False)

    async def _admitted(self, data: bytes, *, embed: bool) -> np.ndarray:
        """Decode (and embed) one upload as one of the `queue_size` in flight, within the request timeout."""
        if self._pending >= self.queue_size:
            raise Overloaded()
        self._pending += 1
        try:
            with anyio.fail_after(self.request_timeout):
                await self._wait_ready()
                pixels = await self._decode(data)
                return await self._embed(pixels) if embed else pixels
        except TimeoutError:
            raise Overloaded() from None
        finally:
            self._pending -= 1

    async def _wait_ready(self) -> None:
        while not self._ready.is_set():  # polled: a blocking wait in a thread would ignore the timeout
            await anyio.sleep(0.05)
        if self._error is not None:
            raise ModelUnavailable()

    async def _decode(self, data: bytes) -> np.ndarray:
        pre = self._pre
        assert pre is not None  # set before _ready
        if self._pool is None:
            return (await anyio.to_thread.run_sync(lambda: decode(data, pre, max_pixels=self.max_pixels))).pixels
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        task = next(self._task_ids)
        self._waiting[task] = (loop, future)
        try:
            await anyio.to_thread.run_sync(self._pool.submit, task, data)
            result = await future
        finally:
            self._waiting.pop(task, None)
        if isinstance(result, DecodeFailed):
            if getattr(self._pool, "broken", None):  # no decode worker can start: the server's fault
                log.error("dinosearch: image decoding is unavailable: %s", self._pool.broken)
                raise ModelUnavailable()
            raise DecodeError(result.error, result.message)
        return result.decoded.pixels

    async def _embed(self, pixels: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._jobs.put(_Job(pixels, future, loop))
        return await future

    # threads ------------------------------------------------------------------------------------
    def _model_loop(self) -> None:
        try:
            embedder = self.index.embedder()
            self._pre = embedder.preprocess
            if self._decode_workers > 0:
                from ..workers import DecodePool

                self._pool = DecodePool(
                    embedder.preprocess, workers=self._decode_workers, timeout=self._decode_timeout,
                    max_pixels=self.max_pixels,
                )
                self._deliverer = threading.Thread(target=self._deliver_decoded, name="dinosearch-decoded", daemon=True)
                self._deliverer.start()
        except BaseException as exc:  # noqa: BLE001 - the server keeps serving by-id routes without a model
            log.error("dinosearch: the model could not be loaded, image uploads will answer 503: %s", exc)
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        limit = max(1, self._batch_size or embedder.batch_size)
        stop = False
        while not stop:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            # Micro-batching without a timer: whatever queued while the last batch ran goes together.
            while len(batch) < limit:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            live = [j for j in batch if not j.future.done()]  # done = cancelled: the client went away
            if not live:
                continue
            self.batch_sizes.append(len(live))
            try:
                vectors = embedder.embed(np.stack([j.pixels for j in live]))
            except Exception:  # noqa: BLE001 - answer these requests, keep the thread alive
                log.exception("dinosearch: the model failed on a batch of %d", len(live))
                for j in live:
                    _settle(j.loop, j.future, None, ModelUnavailable())
                continue
            for j, v in zip(live, vectors, strict=True):
                _settle(j.loop, j.future, np.asarray(v, dtype=np.float32), None)

    def _deliver_decoded(self) -> None:
        while not self._stop.is_set():
            try:
                result = self._pool.results.get(timeout=0.2)
            except queue.Empty:
                continue
            waiter = self._waiting.get(result.task)
            if waiter is not None:  # None: the request timed out or was cancelled meanwhile
                _settle(waiter[0], waiter[1], result, None)


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    def apply() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    try:
        loop.call_soon_threadsafe(apply)
    except RuntimeError:  # the loop has closed (shutdown): nobody is waiting any more
        pass
