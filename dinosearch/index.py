"""Index: plan -> route -> decode -> embed -> write -> sweep -> report, on this machine.

Cheapest first: size and mtime skip an unchanged file without opening it (plan); a content hash already
in the catalogue (a rename or a copy) reuses the stored vector without decoding (route); only new
content is decoded, in sandboxed worker processes (workers), and meets the model, in batches (embed);
rows are committed in chunks, so an interrupted run keeps what it finished (writer).

Planning, writing and sweeping are executor-independent (plan.py, writer.py): this module is the local
executor, which drives routing, the decode pool and the model in this process.
"""

from __future__ import annotations

import collections
import os
import queue
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from ._decode_worker import VANISHED, VideoRequest
from .decode import Decoded
from .embed import Embedder
from .errors import DinosearchError
from .plan import Plan, plan
from .read import content_hash as content_hash  # re-exported: the hash the catalogue stores
from .records import MAX_PIXELS, ImageFile, IndexReport, VideoOptions
from .route import Failed, Reuse, ReuseFrames, Router, ToDecode
from .store.catalogue import Catalogue, FrameRow, vector_bytes
from .video import INSTALL_HINT, DecodedVideo
from .video import available as video_available
from .workers import DecodeDone, DecodeFailed, DecodePool
from .writer import Writer

Progress = Callable[[int, int], None]  # (files done, files to do)


def run(
    catalogue: Catalogue,
    roots: list[str],
    *,
    load_embedder: Callable[[], Embedder],
    batch_size: int | None = None,
    workers: int | None = None,
    decode_timeout: float = 60.0,
    max_pixels: int = MAX_PIXELS,
    follow_symlinks: bool = False,
    progress: Progress | None = None,
    commit_every: int = 256,
    commit_seconds: float = 5.0,
    on_changes: Callable[[tuple[int, ...], tuple[int, ...]], None] | None = None,
    video: VideoOptions | None = None,
) -> tuple[IndexReport, bool]:
    """Index `roots` into the catalogue. Returns the report and whether the catalogue changed.

    `on_changes(upserted, removed)` is told, once the run has finished, the ids of the rows it wrote
    and deleted (for updating the vector index in place).

    `load_embedder` is called at most once, and only when some file's content is new: re-indexing an
    unchanged tree, or one where files were only renamed or copied, never loads the model.
    `video`: also index video files, sampled into frames this way (None: videos are left as they are).
    Raises PathNotFoundError, and DinosearchError when no decoder can start or `video` is asked for
    without PyAV.
    """
    if video is not None and not video_available():
        raise DinosearchError(f"--video needs PyAV (FFmpeg's libraries): {INSTALL_HINT}")
    started = time.monotonic()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see api.Index.add
    p = plan(catalogue, [os.path.abspath(r) for r in roots], follow_symlinks=follow_symlinks, video=video is not None)
    writer = Writer(catalogue, p, commit_every=commit_every, commit_seconds=commit_seconds)
    try:
        if p.todo:
            _LocalRun(catalogue, p, writer, load_embedder, batch_size=batch_size, workers=workers,
                      decode_timeout=decode_timeout, max_pixels=max_pixels, video=video).run(progress)
    finally:
        writer.commit()  # keep whatever finished, also when interrupted
    result = writer.finish(started)
    if on_changes is not None and writer.exact_changes:  # otherwise the vector index is rebuilt
        on_changes(tuple(writer.upserted), tuple(writer.removed_ids))
    return result


@dataclass(frozen=True)
class _Pending:
    """A decoded file waiting for its batch."""

    file: ImageFile
    content_hash: str
    decoded: Decoded
    look_up: bool  # the content may be indexed already (a copy under another root): look before embedding


def _source(item: ToDecode, *, video: VideoOptions) -> bytes | str | VideoRequest:
    """What a decode worker gets for a routed file: a video to sample, the bytes read here, or its path."""
    return VideoRequest(item.file.path, video) if item.file.video else item.source


class _ModelThreads:
    """Torch's threads for a model on the CPU: all of torch's threads, or only the cores the decode
    workers leave free, whichever embeds faster per image in this run.

    A thread per core in the model beside a decode process per core is right for a heavy model, which
    keeps the decoders idle most of the time. But each of a light model's many small parallel regions
    then waits for a thread the OS has lent to a busy decoder: the tiny test model took 7-9 ms of CPU
    per image on 2 threads beside 2 decoders and ~1.8 ms on 1 (the pipeline section of `make bench`).
    Queue lengths can't tell the two apart (the slowed model looks like the bottleneck), but how busy
    the model's threads keep can: process CPU / (wall x threads) over a batch was 0.9-1.0 for the
    ViT-S/14-shaped model here and ~0.5 for the tiny one. Below BUSY, one batch is timed on the fewer
    threads and compared with the median of the last few on all threads; the faster is kept. A choice
    of fewer is checked again every EVERY batches; after a probe that found all threads faster, the
    next may come RETRY batches later (one batch is noisy on a busy host).
    A heavy model is never slowed by a probe. Other backends and devices keep their own threads.
    """

    BUSY = 0.6  # CPU / (wall x threads) below which the model's threads are mostly waiting
    EVERY = 50  # batches between checks of a choice of fewer threads
    RETRY = 8  # batches on all threads, still waiting, before probing again

    def __init__(self, embedder: Embedder, workers: int):
        self.torch: Any = None
        self.batches = 0
        self.since = 0  # batches since the last change of threads
        self.probed = False  # since the model last went back to all threads
        self.probing: float | None = None  # seconds per image on all threads, while one batch runs on fewer
        self.recent: collections.deque[float] = collections.deque(maxlen=3)  # seconds per image, all threads
        if getattr(embedder, "device", None) == "cpu" and getattr(embedder, "backend", None) in ("torch", "compile"):
            import torch

            self.high = torch.get_num_threads()
            self.low = max(1, min(self.high, (os.cpu_count() or 1) - workers))
            if self.low < self.high:
                self.torch = torch

    def batch_done(self, seconds: float, cpu: float, images: int) -> None:
        """A batch of `images` took the model `seconds` of wall time and this process `cpu` seconds of
        CPU: pick the threads of the next one."""
        self.batches += 1
        if self.torch is None or self.batches == 1:  # the first batch warms the model up: not judged
            return
        threads, per_image = self.torch.get_num_threads(), seconds / images
        if self.probing is not None:  # this batch ran on fewer threads: keep the faster
            self._use(self.low if per_image < self.probing else self.high)
            self.probing = None
            return
        self.since += 1
        if threads == self.high:
            self.recent.append(per_image)
            # Judged every batch (free while its threads are busy); once a probe has found all threads
            # faster anyway (a loaded host), not again for RETRY batches.
            if cpu < self.BUSY * seconds * threads and (not self.probed or self.since >= self.RETRY):
                self.probing, self.probed = statistics.median(self.recent), True
                self._use(self.low)
        elif self.since >= self.EVERY:
            self.probed = False  # all threads again: their busyness says whether fewer are still better
            self._use(self.high)

    def _use(self, threads: int) -> None:
        if threads != self.torch.get_num_threads():
            self.recent.clear()  # times from before the change no longer say how all threads do
        self.torch.set_num_threads(threads)
        self.since = 0

    def restore(self) -> None:
        if self.torch is not None:
            self.torch.set_num_threads(self.high)


class _LocalRun:
    """Routing in a thread, decoding in a process pool, embedding in this thread, writes via `writer`."""

    def __init__(self, catalogue: Catalogue, p: Plan, writer: Writer, load_embedder: Callable[[], Embedder], *,
                 batch_size: int | None, workers: int | None, decode_timeout: float, max_pixels: int,
                 video: VideoOptions | None = None):
        self.catalogue, self.plan, self.writer = catalogue, p, writer
        self.video = video or VideoOptions()
        self.load_embedder = load_embedder
        self.batch_size, self.decode_timeout, self.max_pixels = batch_size, decode_timeout, max_pixels
        cpus = os.cpu_count() or 1
        self.workers = workers or cpus
        self.results: queue.Queue = queue.Queue()  # routed and decoded records, one per file
        self.router = Router(catalogue, p.todo, self.results, indexed_sizes={k.size for k in p.known.values()},
                             threads=min(8, cpus))
        self.pool: DecodePool[ToDecode] | None = None
        self.embedder: Embedder | None = None
        self.threads: _ModelThreads | None = None
        self.batch: list[_Pending] = []

    def run(self, progress: Progress | None) -> None:
        total, done, last_item = len(self.plan.todo), 0, time.monotonic()
        try:
            self.router.start()
            while done < total:
                self._start_decoding_if_needed()
                try:
                    item = self.results.get(timeout=0.1)
                except queue.Empty:
                    if self.router.error is not None:
                        raise self.router.error
                    if self.batch and time.monotonic() - last_item > 1.0:
                        self._flush()  # the decoders are behind: don't hold finished images back
                    continue
                last_item = time.monotonic()
                done += 1
                self._take(item)
                if self.batch and (len(self.batch) >= self._batch_limit() or done == total):
                    self._flush()
                self.writer.maybe_commit()
                if progress is not None:
                    progress(done, total)
            self._flush()
        finally:
            self.router.stop.set()
            if self.pool is not None:
                self.pool.close()
            if self.threads is not None:
                self.threads.restore()
            # Joined, not left to die with the interpreter: a daemon thread still running at exit is
            # killed inside whatever C++ it is in (torch aborts with "terminate called ...").
            if self.router.is_alive():
                self.router.join(timeout=10)

    def _start_decoding_if_needed(self) -> None:
        if self.pool is None and self.router.need_decoder.is_set():
            self.embedder = self.load_embedder()
            self.threads = _ModelThreads(self.embedder, self.workers)
            self.pool = DecodePool(
                self.embedder.preprocess, workers=self.workers, timeout=self.decode_timeout,
                max_pixels=self.max_pixels, max_ready=2 * self._batch_limit(), results=self.results,
                inbox=self.router.to_decode, source=partial(_source, video=self.video),
            )
        if self.pool is not None and self.pool.broken:
            # No decoder can start at all: an installation problem, not the files' fault.
            raise DinosearchError(f"the image decoders cannot start: {self.pool.broken}")

    def _take(self, item: object) -> None:
        """One routed or decoded record -> a row, a failure, or a place in the next batch."""
        w = self.writer
        if isinstance(item, DecodeDone):
            self._decoded(item)
        elif isinstance(item, DecodeFailed):
            if self.pool is not None and self.pool.broken:  # the decoders' fault, not the file's: record nothing
                raise DinosearchError(f"the image decoders cannot start: {self.pool.broken}")
            if item.error != VANISHED:  # gone since the walk: the next run sweeps it
                w.fail(item.task.file, item.error, item.message)
        elif isinstance(item, Reuse):
            w.add(item.file, item.content_hash, item.vector)
        elif isinstance(item, ReuseFrames):
            w.add_frames(item.file, item.content_hash, list(item.frames))
        elif isinstance(item, Failed):
            w.fail(item.file, item.error, item.message)
        # Gone: deleted between the walk and the read; the next run sweeps it

    def _decoded(self, item: DecodeDone[ToDecode]) -> None:
        f, h = item.task.file, item.task.content_hash
        if item.read is not None:  # the worker read the file: the identity of the bytes it decoded
            f = replace(f, size=item.read.size, mtime_ns=item.read.mtime_ns)
            h = item.read.content_hash
        assert h is not None
        d = item.decoded
        if isinstance(d, DecodedVideo):
            self._video(f, h, d)
            return
        # Read by the router: it looked the hash up already. Read by the worker: unknown here yet, and
        # looked up with the rest of its batch (one query per batch, not one per file).
        self.batch.append(_Pending(f, h, d, look_up=item.read is not None))

    def _video(self, f: ImageFile, h: str, d: DecodedVideo) -> None:
        """A decoded video: its frames embedded now, in batches, and written together (one commit
        replaces its old frames). A copy of an indexed video reuses that video's frames."""
        stored = self.catalogue.frames_for_hash(h)
        if stored:
            self.writer.add_frames(f, h, stored)
            return
        self._flush()  # photos waiting first: this video's model time must not hold them back
        frames: list[FrameRow] = []
        step = self._batch_limit()
        for start in range(0, len(d.frames), step):
            part = d.frames[start : start + step]
            vectors = self.embedder.embed(np.stack([fr.pixels for fr in part]))
            frames += [FrameRow(fr.timestamp, vector_bytes(v), fr.thumbnail, d.width, d.height, d.format)
                       for fr, v in zip(part, vectors)]
        self.writer.add_frames(f, h, frames, embedded=len(frames))

    def _batch_limit(self) -> int:
        return self.batch_size or (self.embedder.batch_size if self.embedder is not None else 16)

    def _flush(self) -> None:
        """Embed: the batch through the model, its rows to the writer."""
        if not self.batch:
            return
        assert self.embedder is not None
        batch, self.batch = self.batch, []
        # A copy of a photo indexed under another root keeps its stored vector; copies within the
        # batch are embedded once.
        vectors = self.catalogue.vectors_for_hashes(p.content_hash for p in batch if p.look_up)
        new = {p.content_hash: p for p in batch if p.content_hash not in vectors}
        if new:
            pixels = np.stack([p.decoded.pixels for p in new.values()])
            started, cpu = time.perf_counter(), time.process_time()
            vectors.update(zip(new, map(vector_bytes, self.embedder.embed(pixels))))
            if self.threads is not None:
                self.threads.batch_done(time.perf_counter() - started, time.process_time() - cpu, len(new))
        for p in batch:
            d = p.decoded
            self.writer.add(p.file, p.content_hash, vectors[p.content_hash], width=d.width, height=d.height,
                            format=d.format, embedded=new.get(p.content_hash) is p)
