"""Index: walk -> skip unchanged -> reuse or read + decode -> embed -> write -> sweep -> report.

Cheapest first: size and mtime skip an unchanged file without opening it; a content hash already in
the catalogue (a rename or a copy) reuses the stored vector without decoding; only new content meets
the model. Rows are committed in chunks, so an interrupted run keeps what it finished.

A file the size of one indexed under the same roots may be a rename or a copy: this process reads
and hashes it first. Every other file goes to a decode worker by path, which reads, hashes and
decodes it, so the bytes of new photos never pass through this process (at GPU speeds it would be
the bottleneck); a copy of a file indexed elsewhere is still found by its hash before the model.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ._decode_worker import VANISHED
from .decode import MAX_PIXELS
from .embed import Embedder
from .errors import DinosearchError, PathNotFoundError
from .read import Unreadable, Vanished, read_whole
from .read import content_hash as content_hash  # re-exported: the hash the catalogue stores
from .records import ImageFile, IndexReport
from .store.catalogue import Catalogue, FailureRow, ImageRow, Known, vector_bytes
from .walk import WalkResult, walk
from .workers import DecodeFailed, Decoded, DecodePool

Progress = Callable[[int, int], None]  # (files done, files to do)


@dataclass(frozen=True)
class _Read:
    file: ImageFile  # size and mtime as fstat saw them when the bytes were read
    content_hash: str
    data: bytes


@dataclass(frozen=True)
class _Reuse:
    file: ImageFile
    content_hash: str
    vector: bytes


@dataclass(frozen=True)
class _Failed:
    file: ImageFile
    error: str
    message: str


@dataclass(frozen=True)
class _Vanished:
    file: ImageFile


def read_file(f: ImageFile) -> _Read | _Failed | _Vanished:
    """Read and hash one file in this process."""
    try:
        r = read_whole(f.path)
    except Vanished:
        return _Vanished(f)
    except Unreadable as exc:
        return _Failed(f, exc.kind, exc.message)
    return _Read(replace(f, size=r.size, mtime_ns=r.mtime_ns), content_hash(r.data), r.data)


@dataclass
class Plan:
    """What a run has to do, decided from stat alone."""

    todo: list[ImageFile]
    known: dict[str, Known]
    unchanged: int
    failed_unchanged: int
    gone: list[str]
    gone_failures: list[str]
    warnings: list[str]
    failed_before: dict[str, tuple[int, int, str, str]] = field(default_factory=dict)


def plan(catalogue: Catalogue, roots: list[str], *, follow_symlinks: bool = False) -> Plan:
    walks: dict[str, WalkResult] = {}
    for root in roots:
        if not os.path.exists(root):
            raise PathNotFoundError(f"{root} does not exist; check the path (nothing was changed)")
        walks[root] = walk(root, follow_symlinks=follow_symlinks)
    known = catalogue.known_under(roots)
    known_failed = catalogue.failures_under(roots)
    warnings: list[str] = []
    protected: list[str] = []  # prefixes whose rows must not be swept
    for root, w in walks.items():
        if not w.files:
            if any(_under(p, root) for p in known):
                warnings.append(f"{root} holds no images now; its indexed images were kept (is it unmounted?)")
            protected.append(root)
        for d in w.unreadable:
            warnings.append(f"cannot list {d}; its indexed images were kept")
            protected.append(d)
    seen: set[str] = set()
    todo: list[ImageFile] = []
    unchanged = failed_unchanged = 0
    for w in walks.values():
        for f in w.files:
            if f.path in seen:
                continue  # overlapping roots
            seen.add(f.path)
            k = known.get(f.path)
            if k is not None and k.size == f.size and k.mtime_ns == f.mtime_ns:
                unchanged += 1
            elif k is None and _failed_for_good(known_failed.get(f.path), f):
                failed_unchanged += 1
            else:
                todo.append(f)
    gone = [p for p in known if p not in seen and not any(_under(p, r) for r in protected)]
    gone_failures = [p for p in known_failed if p not in seen and not any(_under(p, r) for r in protected)]
    return Plan(todo, known, unchanged, failed_unchanged, gone, gone_failures, warnings, known_failed)


# Failures tried again on every run even when the file is unchanged: the fix (chmod) leaves its mtime
# as it was, and a refused open costs nothing.
RETRY_EVERY_RUN = frozenset({"unreadable"})


# A decoder that crashed or hung may have met a passing condition (memory pressure, a busy machine):
# such a file is tried once more on the next run, then again only when the decoders change.
RETRY_ONCE = frozenset({"crashed", "timeout"})


def decoders_tag() -> str:
    """The versions of the decoders, recorded in crashed/timeout messages."""
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "none"

    return f"Pillow {version('pillow')}, pillow-heif {version('pillow-heif')}"


def _retry_note(error: str, before: tuple[int, int, str, str] | None, f: ImageFile) -> str:
    """The note a crashed/timeout failure carries: what the next run will do about it."""
    if error not in RETRY_ONCE:
        return ""
    tag = decoders_tag()
    if before is not None and before[:3] == (f.size, f.mtime_ns, error) and tag in before[3]:
        return f" [failed twice with {tag}; tried again when the file or the decoders change]"
    return f" [with {tag}; tried once more on the next run]"


def _failed_for_good(failed: tuple[int, int, str, str] | None, f: ImageFile) -> bool:
    """Whether a file failed before as it is now, in a way that trying again cannot change."""
    if failed is None or failed[:2] != (f.size, f.mtime_ns) or failed[2] in RETRY_EVERY_RUN:
        return False
    return failed[2] not in RETRY_ONCE or f"failed twice with {decoders_tag()}" in failed[3]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class _Reader(threading.Thread):
    """Routes files ahead of the model. One the size of an indexed file is read and hashed here,
    several at a time (hashing releases the GIL): a content hash already in the catalogue reuses its
    vector. Any other file goes on by path, to be read by a decode worker."""

    def __init__(
        self,
        catalogue: Catalogue,
        todo: list[ImageFile],
        out: queue.Queue,
        need_decoder: threading.Event,
        indexed_sizes: set[int],
        threads: int = 2,
    ):
        super().__init__(name="dinosearch-read", daemon=True)
        self.catalogue, self.todo, self.out = catalogue, todo, out
        self.indexed_sizes = indexed_sizes
        self.need_decoder = need_decoder
        self.threads = max(1, threads)
        self.decode_queue: queue.Queue = queue.Queue(maxsize=4)  # bounded: at most a few files in memory
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="dinosearch-read") as pool:
                pending: set[Future] = set()
                for f in self.todo:
                    if self.stop.is_set():
                        return
                    if f.size not in self.indexed_sizes:  # no indexed file has this content: decode it
                        self.need_decoder.set()
                        self._put(self.decode_queue, f)
                        continue
                    pending.add(pool.submit(read_file, f))
                    if len(pending) >= 2 * self.threads:  # bounded read-ahead
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            self._route(fut.result())
                for fut in pending:
                    self._route(fut.result())
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises
            self.error = exc

    def _route(self, r: _Read | _Failed | _Vanished) -> None:
        if isinstance(r, _Read):
            vector = self.catalogue.vector_for_hash(r.content_hash)
            if vector is not None:
                self._put(self.out, _Reuse(r.file, r.content_hash, vector))
            else:
                self.need_decoder.set()
                self._put(self.decode_queue, r)
        else:
            self._put(self.out, r)

    def _put(self, q: queue.Queue, item: Any) -> None:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue


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
) -> tuple[IndexReport, bool]:
    """Index `roots` into the catalogue. Returns the report and whether the catalogue changed.

    `load_embedder` is called at most once, and only when some file's content is new: re-indexing an
    unchanged tree, or one where files were only renamed or copied, never loads the model.
    """
    started = time.monotonic()
    # The model's OpenMP threads should sleep, not spin, between operations: spinning threads steal
    # the cores the decode workers need (measured on 2 cores: +35% images/s). Only takes effect when
    # torch is imported after this (the CLI's case); a user's setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    roots = [os.path.abspath(r) for r in roots]
    p = plan(catalogue, roots, follow_symlinks=follow_symlinks)
    total = len(p.todo)
    counts = {"added": 0, "updated": 0, "failed": p.failed_unchanged, "embedded": 0}
    pending_rows: list[ImageRow] = []
    pending_failed: list[FailureRow] = []
    last_commit = time.monotonic()
    changed = False

    def commit() -> None:
        nonlocal pending_rows, pending_failed, last_commit, changed
        if pending_rows or pending_failed:
            catalogue.write(pending_rows, pending_failed)
            changed = True
        pending_rows, pending_failed, last_commit = [], [], time.monotonic()

    def row(f: ImageFile, h: str, vector: bytes, **extra: Any) -> ImageRow:
        k = p.known.get(f.path)
        counts["updated" if k is not None else "added"] += 1
        return ImageRow(f.path, f.root, f.size, f.mtime_ns, h, vector, id=k.id if k else None, **extra)

    def fail(f: ImageFile, error: str, message: str) -> None:
        counts["failed"] += 1
        message += _retry_note(error, p.failed_before.get(f.path), f)
        pending_failed.append(FailureRow(f.path, f.root, f.size, f.mtime_ns, error, message))

    out: queue.Queue = queue.Queue()
    need_decoder = threading.Event()
    cpus = os.cpu_count() or 1
    sizes = {k.size for k in p.known.values()}
    reader = _Reader(catalogue, p.todo, out, need_decoder, sizes, threads=min(8, cpus))
    pool: DecodePool | None = None
    feeder: threading.Thread | None = None
    embedder: Embedder | None = None
    batch: list[Decoded] = []
    done = 0

    def flush() -> None:
        nonlocal batch
        if not batch:
            return
        assert embedder is not None
        vectors = embedder.embed(np.stack([d.pixels for d in batch]))
        for d, v in zip(batch, vectors):
            f, h = d.task
            pending_rows.append(row(f, h, vector_bytes(v), width=d.width, height=d.height, format=d.format))
        counts["embedded"] += len(batch)
        batch = []

    try:
        if total:
            reader.start()
        last_item = time.monotonic()
        while done < total:
            if need_decoder.is_set() and pool is None:
                embedder = load_embedder()
                bs = batch_size or embedder.batch_size
                pool = DecodePool(
                    embedder.preprocess,
                    workers=workers or cpus,
                    timeout=decode_timeout,
                    max_pixels=max_pixels,
                    max_ready=2 * bs,
                    results=out,
                )
                feeder = threading.Thread(target=_feed, args=(reader, pool), name="dinosearch-feed", daemon=True)
                feeder.start()
            if pool is not None and pool.broken:
                # No decoder can start at all: an installation problem, not the files' fault.
                raise DinosearchError(f"the image decoders cannot start: {pool.broken}")
            try:
                item = out.get(timeout=0.1)
            except queue.Empty:
                if reader.error is not None:
                    raise reader.error
                if batch and time.monotonic() - last_item > 1.0:
                    flush()  # the decoders are behind: don't hold finished images back
                continue
            last_item = time.monotonic()
            done += 1
            if isinstance(item, Decoded):
                if item.read is not None:  # the worker read the file: the identity of the bytes it decoded
                    size, mtime_ns, h = item.read
                    item = replace(item, task=(replace(item.task[0], size=size, mtime_ns=mtime_ns), h))
                    stored = catalogue.vector_for_hash(h)  # a copy of a file indexed under another root
                else:
                    stored = None
                if stored is not None:
                    pending_rows.append(row(*item.task, stored, width=item.width, height=item.height, format=item.format))
                else:
                    batch.append(item)
            elif isinstance(item, DecodeFailed):
                if pool is not None and pool.broken:  # the decoders' fault, not the file's: record nothing
                    raise DinosearchError(f"the image decoders cannot start: {pool.broken}")
                if item.error != VANISHED:  # gone since the walk: the next run sweeps it
                    fail(item.task[0], item.error, item.message)
            elif isinstance(item, _Reuse):
                pending_rows.append(row(item.file, item.content_hash, item.vector))
            elif isinstance(item, _Failed):
                fail(item.file, item.error, item.message)
            # _Vanished: deleted between the walk and the read; the next run sweeps it
            if batch and (len(batch) >= (batch_size or embedder.batch_size) or done == total):  # type: ignore[union-attr]
                flush()
            if len(pending_rows) + len(pending_failed) >= commit_every or time.monotonic() - last_commit > commit_seconds:
                commit()
            if progress is not None:
                progress(done, total)
        flush()
    finally:
        reader.stop.set()
        if pool is not None:
            pool.close()
        commit()  # keep whatever finished, also when interrupted
    removed = catalogue.remove(p.gone, p.gone_failures) if (p.gone or p.gone_failures) else 0
    changed = changed or bool(p.gone or p.gone_failures)
    report = IndexReport(
        added=counts["added"],
        updated=counts["updated"],
        removed=removed,
        unchanged=p.unchanged,
        failed=counts["failed"],
        seconds=time.monotonic() - started,
        embedded=counts["embedded"],
        warnings=tuple(p.warnings),
    )
    return report, changed


def _feed(reader: _Reader, pool: DecodePool) -> None:
    """Move files into the decode pool (blocks while the workers are busy: bounded memory)."""
    while not reader.stop.is_set():
        try:
            r = reader.decode_queue.get(timeout=0.2)
        except queue.Empty:
            if not reader.is_alive() and reader.decode_queue.empty():
                return
            continue
        if isinstance(r, _Read):
            pool.submit((r.file, r.content_hash), r.data)
        else:  # an ImageFile: the worker reads and hashes it
            pool.submit((r, None), r.path)
