"""Route: each file to do goes the cheapest way ahead of the model.

A file the size of one already indexed under the same roots may be a rename or a copy: it is read and
hashed here, several at a time (hashing releases the GIL), and a content hash already in the catalogue
reuses its stored vector (`Reuse`). Every other file goes on to a decoder by path (`ToDecode` without
bytes), which reads, hashes and decodes it, so the bytes of new photos never pass through the indexing
process (at GPU speeds it would be the bottleneck). A video is hashed in chunks, never read whole, and
a hash already indexed reuses all of that video's stored frames (`ReuseFrames`).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace

from .read import Unreadable, Vanished, content_hash, hash_file, read_whole
from .records import FailureKind, ImageFile
from .store.catalogue import Catalogue, FrameRow


@dataclass(frozen=True)
class ReadFile:
    """A file read and hashed in this process; size and mtime as fstat saw them when it was read."""

    file: ImageFile
    content_hash: str
    data: bytes


@dataclass(frozen=True)
class ToDecode:
    """A file for a decoder: with its bytes and hash when read here, else by path alone."""

    file: ImageFile
    content_hash: str | None = None
    data: bytes | None = None

    @property
    def source(self) -> bytes | str:
        """What a decoder gets for a photo: the bytes read here, else the path (read by the decoder)."""
        return self.data if self.data is not None else self.file.path


@dataclass(frozen=True)
class Reuse:
    """A file whose content is indexed already: its stored vector, no decoding, no model."""

    file: ImageFile
    content_hash: str
    vector: bytes  # little-endian float32


@dataclass(frozen=True)
class ReuseFrames:
    """A video whose content is indexed already: its stored frames, no decoding, no model."""

    file: ImageFile
    content_hash: str
    frames: tuple[FrameRow, ...]


@dataclass(frozen=True)
class HashedVideo:
    """A video hashed in this process (size and mtime as fstat saw them when it was hashed)."""

    file: ImageFile
    content_hash: str


@dataclass(frozen=True)
class Failed:
    file: ImageFile
    error: FailureKind
    message: str


@dataclass(frozen=True)
class Gone:
    """Deleted (or no longer a regular file) between the walk and the read: the next run sweeps it."""

    file: ImageFile


Routed = Reuse | ReuseFrames | Failed | Gone


def read_file(f: ImageFile) -> ReadFile | HashedVideo | Failed | Gone:
    """Read and hash one file in this process (a video: hash it in chunks)."""
    try:
        if f.video:
            h = hash_file(f.path)
            return HashedVideo(replace(f, size=h.size, mtime_ns=h.mtime_ns), h.content_hash)
        r = read_whole(f.path)
    except Vanished:
        return Gone(f)
    except Unreadable as exc:
        return Failed(f, exc.kind, exc.message)
    return ReadFile(replace(f, size=r.size, mtime_ns=r.mtime_ns), content_hash(r.data), r.data)


class Router(threading.Thread):
    """Routes `todo` in a background thread: Reuse / Failed / Gone records go to `out`, files to
    decode to `to_decode` (bounded: at most a few files' bytes in memory). `need_decoder` is set the
    first time a file needs decoding, so the model is loaded only then. An error in this thread is
    kept in `error` for the caller to raise."""

    def __init__(self, catalogue: Catalogue, todo: list[ImageFile], out: queue.Queue, *, indexed_sizes: set[int], threads: int = 2):
        super().__init__(name="dinosearch-read", daemon=True)
        self.catalogue, self.todo, self.out = catalogue, todo, out
        self.indexed_sizes = indexed_sizes
        self.threads = max(1, threads)
        self.to_decode: queue.Queue[ToDecode] = queue.Queue(maxsize=4)
        self.need_decoder = threading.Event()
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
                        self._decode(ToDecode(f))
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

    def _route(self, r: ReadFile | HashedVideo | Failed | Gone) -> None:
        if isinstance(r, HashedVideo):
            frames = self.catalogue.frames_for_hash(r.content_hash)
            if frames:
                self._put(self.out, ReuseFrames(r.file, r.content_hash, tuple(frames)))
            else:
                self._decode(ToDecode(r.file, r.content_hash))
        elif isinstance(r, ReadFile):
            vector = self.catalogue.vector_for_hash(r.content_hash)
            if vector is not None:
                self._put(self.out, Reuse(r.file, r.content_hash, vector))
            else:
                self._decode(ToDecode(r.file, r.content_hash, r.data))
        else:
            self._put(self.out, r)

    def _decode(self, item: ToDecode) -> None:
        self.need_decoder.set()
        self._put(self.to_decode, item)

    def _put(self, q: queue.Queue, item: object) -> None:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
