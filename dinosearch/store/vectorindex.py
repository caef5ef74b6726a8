"""The vector index: the whole FAISS lifecycle, a cache of the catalogue's vectors keyed by row id.

- `index_type` / `make_index`: the one place where the kind of FAISS index is chosen and named (a FAISS
  factory string, recorded with each file so readers know what they map).
- `build` / `load` / `save`: a fresh index from SQLite; the current file when it matches SQLite exactly,
  else a rebuild; a new generation written atomically.
- `VectorIndex`: the in-memory copy a process searches, kept in step with SQLite (`refresh` for
  readers, `sync` for the writer).

The file is `vectors-<generation>.faiss`; its generation, type, count and dim go into SQLite only
after the file is durably in place. On load, any mismatch with SQLite means a rebuild from SQLite,
never wrong ids.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DinosearchError, IndexLockedError
from .catalogue import Catalogue
from .layout import FLAT, GENERATION_KEY, recorded_type, vectors_current, vectors_file
from .lock import WriterLock


def _faiss() -> Any:
    import faiss

    return faiss


@dataclass
class LoadedVectors:
    index: Any  # faiss.IndexIDMap2
    generation: int
    rebuilt: bool  # True: the file was missing or did not match SQLite and was rebuilt in memory

    @property
    def count(self) -> int:
        return int(self.index.ntotal)


def count_if_current(catalogue: Catalogue, dim: int) -> int | None:
    """The vector count of the current file when every cheap check says it matches SQLite, else None.

    Lets `stats` answer without loading FAISS; anything doubtful goes through `load` instead.
    """
    state = catalogue.get_setting(GENERATION_KEY) or {}
    images = catalogue.count_images()
    return images if vectors_current(catalogue.dir, state, version=catalogue.version(), dim=dim, images=images) else None


def index_type(count: int) -> str:
    """The FAISS factory string for a collection of `count` vectors: exact inner-product search."""
    return FLAT


def make_index(dim: int, kind: str = FLAT) -> Any:
    """An empty index of `kind` (a FAISS factory string) over `dim`-dimensional vectors, inner product."""
    faiss = _faiss()
    return faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)


def empty_index(dim: int) -> Any:
    return make_index(dim, index_type(0))


def max_id(index: Any) -> int:
    if index.ntotal == 0:
        return 0
    return int(_faiss().vector_to_array(index.id_map).max())


def build(catalogue: Catalogue, dim: int) -> Any:
    """A fresh index of every vector in SQLite."""
    index = make_index(dim, index_type(catalogue.count_images()))
    for ids, vecs in catalogue.iter_vectors():
        if vecs.shape[1] != dim:
            raise DinosearchError(f"stored vectors have {vecs.shape[1]} dimensions, the model {dim}")
        index.add_with_ids(np.ascontiguousarray(vecs), ids)
    return index


def load(catalogue: Catalogue, dim: int) -> LoadedVectors:
    """The index as SQLite says it should be: the current file if it matches exactly, else a rebuild."""
    state = catalogue.get_setting(GENERATION_KEY) or {}
    generation = int(state.get("generation", 0))
    path = vectors_file(catalogue.dir, generation)
    if generation and path.exists() and _size_matches(path, state):
        try:
            index = _faiss().read_index(str(path))
            if _matches(index, catalogue, dim, state):
                return LoadedVectors(index, generation, rebuilt=False)
        except Exception:  # noqa: BLE001 - a truncated or garbage file is rebuilt, whatever FAISS raises
            pass
    return LoadedVectors(build(catalogue, dim), generation, rebuilt=True)


def _size_matches(path: Path, state: dict[str, Any]) -> bool:
    """A file of another size than the one written (truncated, swapped) is not even parsed."""
    expected = state.get("bytes")
    try:
        return expected is None or path.stat().st_size == int(expected)
    except OSError:
        return False


SAMPLE = 64  # vectors compared with SQLite on load: catches a file of another model or index with equal ids


def _sample_matches(index: Any, catalogue: Catalogue, ids: np.ndarray) -> bool:
    if len(ids) == 0:
        return True
    picks = np.unique(ids[np.linspace(0, len(ids) - 1, num=min(SAMPLE, len(ids))).astype(np.int64)])
    for i in picks.tolist():
        stored = catalogue.vector_of(i)
        if stored is None or not np.array_equal(index.reconstruct(i), stored.astype(np.float32)):
            return False
    return True


def _matches(index: Any, catalogue: Catalogue, dim: int, state: dict[str, Any]) -> bool:
    faiss = _faiss()
    if index.d != dim or int(state.get("dim", -1)) != dim:
        return False
    if recorded_type(state) != FLAT or not isinstance(index, faiss.IndexIDMap2):
        return False
    if state.get("version") != catalogue.version():
        return False  # rows were written after this file: their vectors may differ even at equal ids
    if index.ntotal != state.get("count") or index.ntotal != catalogue.count_images():
        return False
    file_ids = np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
    if not np.array_equal(file_ids, catalogue.all_ids()):
        return False
    return _sample_matches(index, catalogue, file_ids)


def save(index: Any, catalogue: Catalogue, dim: int, version: int) -> int:
    """Write the index, built from the catalogue at `version`, as the next generation; returns it.

    Only a process holding the writer lock calls this. Old generations are removed afterwards.
    """
    state = catalogue.get_setting(GENERATION_KEY) or {}
    generation = int(state.get("generation", 0)) + 1
    final = vectors_file(catalogue.dir, generation)
    tmp = final.with_name(final.name + ".tmp")
    try:
        size = _write_file(index, tmp)
        os.replace(tmp, final)
        _fsync_dir(catalogue.dir)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)) or "No space" in str(exc):
            raise DinosearchError(
                f"the disk holding {catalogue.dir} is full: the vector file was not written (the previous one is "
                "intact, and what was indexed is kept in the catalogue) — free some space and run again"
            ) from None
        raise DinosearchError(f"could not write the vector index in {catalogue.dir}: {exc}") from None
    catalogue.set_settings(
        {
            GENERATION_KEY: {
                "generation": generation, "type": FLAT, "count": int(index.ntotal), "dim": dim,
                "version": version, "bytes": size,
            }
        }
    )
    remove_stale(catalogue.dir, keep=generation)
    return generation


def _write_file(index: Any, path: Path) -> int:
    """Write and fsync `index` to a new file at `path`; returns its size.

    Through Python rather than FAISS's own file writer, which reports a failed close only on stderr: a
    small index on a full disk would otherwise be "written" empty without an error. A leftover file or
    link at `path` is removed first and never followed.
    """
    faiss = _faiss()
    path.unlink(missing_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    with os.fdopen(os.open(path, flags, 0o644), "wb") as f:
        faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def remove_stale(index_dir: Path, keep: int) -> None:
    for p in Path(index_dir).glob("vectors-*.faiss*"):
        if p.name != f"vectors-{keep}.faiss":
            p.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    if os.name == "nt":  # pragma: no cover
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def search(index: Any, queries: np.ndarray, k: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(m, dim) float32 queries -> (scores (m, k), ids (m, k)); id -1 where fewer than k exist.

    `ids`, when given, restricts the search to those ids (filters apply before top-k is cut).
    """
    faiss = _faiss()
    k = max(1, min(k, int(index.ntotal))) if index.ntotal else 1
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if ids is not None:
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))
        return index.search(q, k, params=params)
    return index.search(q, k)


class VectorIndex:
    """The in-memory FAISS index of one index directory, kept in step with SQLite. Thread-safe.

    Readers call `refresh`, which loads a new generation when the writer saved one (or rebuilds from
    SQLite when the file does not match) and, between generations, adds the rows committed since.
    The writer calls `sync` after a run, which saves a new generation when anything changed.
    """

    def __init__(self, catalogue: Catalogue):
        self.catalogue = catalogue
        self._lock = threading.RLock()  # a server's threads share one copy
        self._loaded: LoadedVectors | None = None
        self._version = -1  # the catalogue version the in-memory copy reflects
        self._max_id = 0  # the highest id in it: rows committed later have higher ids

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def refresh(self, dim: int) -> LoadedVectors:
        """The vectors as SQLite has them now, for `dim`-dimensional vectors."""
        with self._lock:
            state = self.catalogue.get_setting(GENERATION_KEY) or {}
            generation = int(state.get("generation", 0))
            version = self.catalogue.version()
            if self._loaded is None or generation != self._loaded.generation:
                self._set(load(self.catalogue, dim), version)
                if self._loaded is not None and self._loaded.rebuilt and self._loaded.count:
                    self._persist_rebuild(dim)
            elif version != self._version:
                self._add_since(version)
            assert self._loaded is not None
            return self._loaded

    def _add_since(self, version: int) -> None:
        """Rows a running `index` committed since the last look: added without a rebuild. Rows it deleted
        stay in memory until the next generation; search drops them (SQLite no longer has them)."""
        assert self._loaded is not None
        for ids, vecs in self.catalogue.iter_vectors(after=self._max_id):
            self._loaded.index.add_with_ids(np.ascontiguousarray(vecs), ids)
            self._max_id = int(ids[-1])
        self._version = version

    def sync(self, dim: int, *, force: bool) -> None:
        """Make the file match SQLite (the caller holds the writer lock): a new generation when the
        catalogue changed (`force`) or the file is missing or stale; else only old generations go."""
        state = self.catalogue.get_setting(GENERATION_KEY) or {}
        version = self.catalogue.version()
        if not force and state.get("version") == version and vectors_file(self.catalogue.dir, state.get("generation", 0)).exists():
            remove_stale(self.catalogue.dir, keep=int(state.get("generation", 0)))  # a killed run's leftovers
            return
        index = build(self.catalogue, dim)
        generation = save(index, self.catalogue, dim, version)
        with self._lock:
            self._set(LoadedVectors(index, generation, rebuilt=False), version)

    def count_if_current(self, dim: int) -> int | None:
        """The vector count without loading anything, when the file on disk is known to be current."""
        return None if self._loaded is not None else count_if_current(self.catalogue, dim)

    def _set(self, loaded: LoadedVectors, version: int) -> None:
        self._loaded, self._version = loaded, version
        self._max_id = max_id(loaded.index)

    def _persist_rebuild(self, dim: int) -> None:
        # A reader that had to rebuild saves its work when no writer is busy; otherwise the writer will.
        try:
            with WriterLock(self.catalogue.dir):
                assert self._loaded is not None
                if self.catalogue.version() == self._version:
                    self._loaded.generation = save(self._loaded.index, self.catalogue, dim, self._version)
        except (IndexLockedError, DinosearchError, OSError):
            pass
