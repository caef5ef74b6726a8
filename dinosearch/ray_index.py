"""Index on a Ray cluster: the same run as index.py, with decode and embed spread over machines.

Everything that decides what to do stays in this process, the driver, and is the local path's own code:
the walk and plan (plan.py), routing of renames and copies (route.py), the single writer to SQLite and
FAISS with its chunked commits, the sweep and the report (writer.py). Only two stages run on the cluster:

- read + hash + decode: one Ray task per file (1 CPU), running the decode workers' own function
  (`_decode_worker._decode_one`: allowlist, pixel cap, draft JPEG decoding, EXIF), so a file gives the
  same pixels, or the same failure, as locally. The task streams its small result and its pixels as
  separate objects: the pixels go from the decoding node to a model actor, never through the driver.
- embed: a pool of model actors (one per GPU, `num_gpus=1` each; on a cluster without GPUs one per node),
  each loading the driver's model (ModelSlot.spec); their fingerprints are checked against the index's.

Files are read by path on the nodes: roots must be at the same path on every node (a shared file system);
a node that cannot see them stops the run before anything is decoded (ray_cluster.check_nodes_can_read).
A file's timeout counts from when its task starts running (the task says so first), never a wait for a
CPU or a worker's start-up; a worker that dies is replaced by Ray and the file tried once more, within
the same deadline.
"""

from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass, replace
from collections.abc import Callable
from typing import Any

from ._decode_worker import VANISHED, WorkerFailed
from .errors import DinosearchError, ModelLoadError
from .model import ModelSlot
from .plan import plan
from .ray_cluster import Cluster, DecodedMeta, check_nodes_can_read, decode_task, import_ray, start_model_actors, task_failure
from .records import MAX_PIXELS, FailureKind, ImageFile, IndexReport, Preprocess
from .route import Failed, Reuse, Router, ToDecode
from .store.catalogue import Catalogue, vector_bytes
from .writer import Writer

DECODE_RETRIES = 1  # a file whose worker dies is tried once more (the node may be at fault), then it failed
EMBED_CALLS_PER_ACTOR = 2  # batches queued on one model actor: the next one is ready when it finishes
WAIT_S = 0.05  # longest wait for the cluster before routing, deadlines and batches are looked at again


def run(
    catalogue: Catalogue,
    roots: list[str],
    *,
    model: ModelSlot,
    address: str = "auto",
    workers: int | None = None,
    decode_timeout: float = 60.0,
    max_pixels: int = MAX_PIXELS,
    follow_symlinks: bool = False,
    progress: Any = None,
    commit_every: int = 256,
    commit_seconds: float = 5.0,
) -> tuple[IndexReport, bool]:
    """Index `roots` with decode and embed on a Ray cluster. Returns the report and whether the catalogue changed.

    `address`: see ray_cluster.Cluster. `workers`: decode slots; twice as many files are handed out at a
    time (default: the cluster's CPUs not held by model actors). `model` is loaded by the actors from `model.spec`, only when some file's
    content is new; their fingerprints are checked against the index's. Raises PathNotFoundError,
    DinosearchError (no Ray, no cluster, a node that cannot read a root, a model actor that died),
    ModelLoadError, ModelMismatchError.
    """
    ray = import_ray()
    started = time.monotonic()
    p = plan(catalogue, [os.path.abspath(r) for r in roots], follow_symlinks=follow_symlinks)
    writer = Writer(catalogue, p, commit_every=commit_every, commit_seconds=commit_seconds)
    try:
        if p.todo:
            with Cluster(ray, address) as cluster:
                check_nodes_can_read(ray, p.todo)
                _RayRun(ray, cluster, catalogue, p.todo, {k.size for k in p.known.values()}, writer, model,
                        workers=workers, decode_timeout=decode_timeout, max_pixels=max_pixels).run(progress)
    finally:
        writer.commit()  # keep whatever finished, also when interrupted
    return writer.finish(started)


def runner(*, model: ModelSlot, address: str) -> Callable[..., tuple[IndexReport, bool]]:
    """`run` with index.run's signature: the local model loader is not needed (the actors load `model`),
    the batch size is in `model.spec`."""

    def go(catalogue: Catalogue, roots: list[str], *, load_embedder: Any = None, batch_size: int | None = None,
           on_changes: Any = None, video: Any = None, **kwargs: Any) -> tuple[IndexReport, bool]:
        # on_changes is never called: after a Ray run the vector index is rebuilt from SQLite.
        if video is not None:
            raise DinosearchError("--video decodes on this machine only for now; index videos without --ray")
        return run(catalogue, roots, model=model, address=address, **kwargs)

    return go


@dataclass
class _Task:
    """A file handed to a decode task; `deadline` is set once the task has started."""

    file: ImageFile
    content_hash: str | None
    deadline: float | None = None


@dataclass(frozen=True)
class _Pending:
    """Decoded on the cluster, waiting for a batch."""

    file: ImageFile
    content_hash: str
    meta: DecodedMeta
    pixels: Any  # ObjectRef
    look_up: bool  # the content may be indexed already (a copy under another root): look before embedding


class _RayRun:
    """Routing in a thread (route.Router), decode tasks and model actors on the cluster, writes via `writer`.

    One loop in this thread: routed records to the writer, files out to decode tasks (one per free
    slot), decoded pixels in batches to the least busy actor, vectors back to the writer.
    """

    def __init__(self, ray: Any, cluster: Cluster, catalogue: Catalogue, todo: list[ImageFile], indexed_sizes: set[int],
                 writer: Writer, model: ModelSlot, *, workers: int | None, decode_timeout: float, max_pixels: int):
        self.ray, self.cluster, self.catalogue, self.writer, self.model = ray, cluster, catalogue, writer, model
        self.total, self.workers, self.timeout, self.max_pixels = len(todo), workers, decode_timeout, max_pixels
        self.routed: queue.Queue = queue.Queue()
        self.router = Router(catalogue, todo, self.routed, indexed_sizes=indexed_sizes, threads=min(8, os.cpu_count() or 1))
        self.actors: list[Any] = []
        self.pre: Preprocess | None = None
        self.batch_limit, self.slots = 16, 1
        self.decode: Any = None  # the remote decode function
        self.decoding: dict[Any, _Task] = {}  # the task's ObjectRefGenerator -> its file
        self.ready: list[_Pending] = []
        self.embedding: dict[Any, tuple[int, list[_Pending]]] = {}  # vectors ref -> (actor, its batch)
        self.last_ready = time.monotonic()
        self.done = 0

    def run(self, progress: Any) -> None:
        try:
            self.router.start()
            while self.done < self.total:
                before = self.done
                self._take_routed()
                if not self.actors and self.router.need_decoder.is_set():
                    self._start_model()
                if self.actors:
                    self._hand_out()
                    self._wait()
                    self._expire()
                    self._embed_if_due()
                elif self.routed.empty():
                    time.sleep(0.01)
                self.writer.maybe_commit()
                if progress is not None and self.done != before:
                    progress(self.done, self.total)
        finally:
            self.router.stop.set()
            for ref in self.decoding:
                self.ray.cancel(ref, force=True)
            for actor in self.actors:
                self.ray.kill(actor)
            if self.router.is_alive():  # as the local executor does: no thread of the run outlives it
                self.router.join(timeout=10)

    def _take_routed(self) -> None:
        if self.router.error is not None:
            raise self.router.error
        while True:
            try:
                item = self.routed.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Reuse):
                self.writer.add(item.file, item.content_hash, item.vector)
            elif isinstance(item, Failed):
                self.writer.fail(item.file, item.error, item.message)
            self.done += 1  # Gone: deleted between the walk and the read; the next run sweeps it

    def _start_model(self) -> None:
        """The model actors, checked against the index's model before any file is decoded."""
        spec = self.model.spec
        self.actors, actor_cpus = start_model_actors(self.ray, spec.model, spec.options())
        for info in self.ray.get([a.info.remote() for a in self.actors]):
            if isinstance(info, str):
                hint = "; a model folder must be at the same path on every node" if os.path.isabs(spec.model) else ""
                raise ModelLoadError(f"a Ray model actor: {info}{hint}")
            fp, self.pre, batch = info
            self.model.adopt(fp)  # every actor's weights must be the index's model
            self.batch_limit = batch
        self.slots = self.workers or self.cluster.decode_cpus(actor_cpus)
        self.decode = self.ray.remote(decode_task).options(num_cpus=1, num_returns="streaming", max_retries=DECODE_RETRIES)

    def _hand_out(self) -> None:
        """Files to free decode slots, unless decoded images already wait for the model (backpressure)."""
        waiting = len(self.ready) + sum(len(b) for _, b in self.embedding.values())
        room = 2 * self.batch_limit * len(self.actors) * EMBED_CALLS_PER_ACTOR
        # Twice the slots: the next file waits at its node while one decodes (a file's clock starts
        # only when its task does), so no CPU idles for a round trip to this process.
        while len(self.decoding) < 2 * self.slots and waiting < room:
            try:
                item: ToDecode = self.router.to_decode.get_nowait()
            except queue.Empty:
                return
            self.decoding[self.decode.remote(item.source, self.pre, self.max_pixels)] = _Task(item.file, item.content_hash)

    def _wait(self) -> None:
        refs = [*self.decoding, *self.embedding]
        if not refs:
            time.sleep(0.01)
            return
        first, _ = self.ray.wait(refs, num_returns=1, timeout=WAIT_S)
        if not first:
            return
        done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in done:
            if ref in self.embedding:
                self._embedded(ref, *self.embedding.pop(ref))
            elif self.decoding[ref].deadline is None:
                next(ref)  # STARTED: the file's clock starts now
                self.decoding[ref].deadline = time.monotonic() + self.timeout
            else:
                self._decoded(ref, self.decoding.pop(ref))

    def _decoded(self, gen: Any, task: _Task) -> None:
        try:
            meta = self.ray.get(next(gen))
        except self.ray.exceptions.RayError as exc:
            meta = task_failure(self.ray, exc)
            if meta is None:  # the cluster failed, not the file
                raise DinosearchError(f"the Ray cluster failed while decoding ({type(exc).__name__}); "
                                      "run again to continue (finished work was kept)") from None
        if isinstance(meta, WorkerFailed):
            if meta.kind != VANISHED:
                self.writer.fail(task.file, meta.kind, meta.message)
            self.done += 1
            return
        f, h = task.file, task.content_hash
        if meta.read is not None:  # the task read the file: the identity of the bytes it decoded
            f, h = replace(f, size=meta.read.size, mtime_ns=meta.read.mtime_ns), meta.read.content_hash
        assert h is not None
        # The pixels' ref is yielded right after. Read by the task: its hash is looked up with the rest
        # of its batch (one query per batch, not one per file).
        self.ready.append(_Pending(f, h, meta, next(gen), look_up=meta.read is not None))
        self.last_ready = time.monotonic()

    def _expire(self) -> None:
        """A file whose task is past its deadline: cancelled (its worker killed), a `timeout` failure."""
        now = time.monotonic()
        for ref, task in [(r, t) for r, t in self.decoding.items() if t.deadline is not None and now > t.deadline]:
            self.ray.cancel(ref, force=True)
            del self.decoding[ref]
            self.writer.fail(task.file, FailureKind.TIMEOUT, f"decoding took longer than {self.timeout:g} s and was "
                             "stopped; the file may be hostile — re-export it")
            self.done += 1

    def _embed_if_due(self) -> None:
        """A full batch, or what is ready when no more is coming soon, to the least busy model actor."""
        while self.ready:
            idle = len(self.ready) < self.batch_limit and (
                self.decoding or not self.router.to_decode.empty() or self.router.is_alive()
            ) and time.monotonic() - self.last_ready < 1.0
            if idle:
                return
            load = [0] * len(self.actors)
            for i, _ in self.embedding.values():
                load[i] += 1
            actor = min(range(len(self.actors)), key=load.__getitem__)
            if load[actor] >= EMBED_CALLS_PER_ACTOR:
                return
            batch, self.ready = self.ready[: self.batch_limit], self.ready[self.batch_limit :]
            # A copy of a photo indexed under another root keeps its stored vector.
            stored = self.catalogue.vectors_for_hashes(p.content_hash for p in batch if p.look_up)
            for p in batch:
                if p.content_hash in stored:
                    m = p.meta
                    self.writer.add(p.file, p.content_hash, stored[p.content_hash], width=m.width, height=m.height,
                                    format=m.format)
                    self.done += 1
            batch = [p for p in batch if p.content_hash not in stored]
            if batch:
                self.embedding[self.actors[actor].embed.remote(*[p.pixels for p in batch])] = (actor, batch)

    def _embedded(self, ref: Any, actor: int, batch: list[_Pending]) -> None:
        try:
            vectors = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # not the files' fault: a run error, nothing recorded
            raise DinosearchError(f"a Ray model actor failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}); "
                                  "run again to continue (finished work was kept)") from None
        for p, v in zip(batch, vectors):
            m = p.meta
            self.writer.add(p.file, p.content_hash, vector_bytes(v), width=m.width, height=m.height,
                            format=m.format, embedded=True)
        self.done += len(batch)
