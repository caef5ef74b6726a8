"""The vector index: the whole FAISS lifecycle, a cache of the catalogue's vectors keyed by row id.

- `index_type` / `make_index`: the one place where the kind of FAISS index is chosen and named (a FAISS
  factory string, recorded with each file so readers know what they map): exact while the collection
  is small, IVF with quantised codes and a tuned nprobe above that (kinds.py, building.py).
- `build` / `load` / `save`: a fresh index from SQLite; the current file when it matches SQLite exactly,
  else a rebuild; a new generation written atomically.
- `VectorIndex`: the in-memory copy a process searches, kept in step with SQLite (`refresh` for
  readers, which map an IVF file instead of reading it; `sync` for the writer, which updates an IVF
  index in place by id).
- `search`: top k, with an exact re-rank of an IVF index's candidates from SQLite's float32 vectors.

The file is `vectors-<generation>.faiss`; its generation, type, count and dim go into SQLite only
after the file is durably in place. On load, any mismatch with SQLite means a rebuild from SQLite,
never wrong ids.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DinosearchError, IndexLockedError
from . import building, recall
from .building import Built, Changes, make_index
from .catalogue import Catalogue
from .kinds import AUTO, choose, describe, holds, ids_of, is_flat, ivf_of
from .kinds import validate as validate_index_type  # noqa: F401  (re-exported for the API)
from .kinds import faiss_module as _faiss
from .layout import FLAT, GENERATION_KEY, recorded_type, vectors_current, vectors_file
from .lock import WriterLock
from .searching import RERANK_EXTRA, LoadedVectors, search  # noqa: F401  (re-exported: the search of a loaded index)

def count_if_current(catalogue: Catalogue, dim: int) -> int | None:
    """The vector count of the current file when every cheap check says it matches SQLite, else None.

    Lets `stats` answer without loading FAISS; anything doubtful goes through `load` instead.
    """
    state = catalogue.get_setting(GENERATION_KEY) or {}
    images = catalogue.count_images()
    return images if vectors_current(catalogue.dir, state, version=catalogue.version(), dim=dim, images=images) else None


def index_type(count: int, dim: int = 384, *, requested: str = AUTO, budget: int | None = None) -> str:
    """The FAISS factory string for a collection of `count` `dim`-dimensional vectors: exact inner-product
    search while small, an IVF index above kinds.CROSSOVER or the memory `budget` (bytes)."""
    return choose(requested, count, dim, budget)


def empty_index(dim: int) -> Any:
    return make_index(dim, index_type(0))


def max_id(index: Any) -> int:
    if index.ntotal == 0:
        return 0
    return int(ids_of(index).max())


def build_generation(catalogue: Catalogue, dim: int, *, requested: str = AUTO, budget: int | None = None) -> Built:
    """A fresh index of every vector in SQLite, with what its generation records (building.build)."""
    return building.build(catalogue, dim, _tuning_search(catalogue), requested=requested, budget=budget)


def build(catalogue: Catalogue, dim: int, *, requested: str = AUTO, budget: int | None = None) -> Any:
    """A fresh index of every vector in SQLite (the index only)."""
    return build_generation(catalogue, dim, requested=requested, budget=budget).index


def _tuning_search(catalogue: Catalogue) -> building.Searcher:
    def run(index: Any, queries: np.ndarray, k: int, nprobe: int, rerank: int) -> np.ndarray:
        loaded = LoadedVectors(index, 0, False, info={"rerank": rerank}, fetch=catalogue.vectors_by_id)
        return search(loaded, queries, k, nprobe=nprobe)[1]

    return run


def load(catalogue: Catalogue, dim: int, *, mmap: bool = False) -> LoadedVectors:
    """The index as SQLite says it should be: the current file if it matches exactly, else a rebuild.

    `mmap`: map an IVF file read-only instead of reading it (readers; the page cache is shared).
    """
    state = catalogue.get_setting(GENERATION_KEY) or {}
    generation = int(state.get("generation", 0))
    path = vectors_file(catalogue.dir, generation)
    if generation and path.exists() and _size_matches(path, state):
        try:
            index = _read(path, mmap=mmap and recorded_type(state) != FLAT)
            if _matches(index, catalogue, dim, state):
                _set_nprobe(index, state.get("nprobe"))
                return LoadedVectors(index, generation, rebuilt=False, info=dict(state), fetch=catalogue.vectors_by_id)
        except Exception:  # noqa: BLE001 - a truncated or garbage file is rebuilt, whatever FAISS raises
            pass
    built = build_generation(catalogue, dim, requested=state.get("requested") or AUTO, budget=state.get("budget"))
    return LoadedVectors(built.index, generation, rebuilt=True, info=built.info, fetch=catalogue.vectors_by_id)


def _read(path: Path, *, mmap: bool) -> Any:
    faiss = _faiss()
    if mmap:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    return faiss.read_index(str(path))


def _set_nprobe(index: Any, nprobe: Any) -> None:
    ivf = ivf_of(index)
    if ivf is not None and nprobe:
        ivf.nprobe = int(nprobe)


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
    found, vecs = catalogue.vectors_by_id(picks)
    if len(found) != len(picks):
        return False
    return all(holds(index, int(i), v) for i, v in zip(found, vecs))


def _matches(index: Any, catalogue: Catalogue, dim: int, state: dict[str, Any]) -> bool:
    faiss = _faiss()
    if index.d != dim or int(state.get("dim", -1)) != dim:
        return False
    flat = recorded_type(state) == FLAT
    if flat != isinstance(index, faiss.IndexIDMap2) or (not flat and ivf_of(index) is None):
        return False
    if state.get("version") != catalogue.version():
        return False  # rows were written after this file: their vectors may differ even at equal ids
    if index.ntotal != state.get("count") or index.ntotal != catalogue.count_images():
        return False
    file_ids = np.sort(ids_of(index))
    if flat:
        if not np.array_equal(file_ids, catalogue.all_ids()):
            return False
    elif len(file_ids) and _summary(file_ids) != catalogue.id_summary():
        # An IVF file: count, lowest and highest id, not every id through Python. The version check
        # above already says SQLite has not changed since this file was written for it; the sampled
        # vectors below say the file is that one.
        return False
    return _sample_matches(index, catalogue, file_ids)


def _summary(ids: np.ndarray) -> tuple[int, int, int]:
    return (len(ids), int(ids.min()), int(ids.max()))


def save(index: Any, catalogue: Catalogue, dim: int, version: int, info: dict[str, Any] | None = None) -> int:
    """Write the index, built from the catalogue at `version`, as the next generation; returns it.

    `info` (type, nprobe, recall, trained, requested, budget) is recorded with it; without it, a flat
    index's. Only a process holding the writer lock calls this. Old generations are removed afterwards.
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
    known = ("type", "nprobe", "rerank", "recall", "trained", "requested", "budget")
    recorded = {"type": FLAT, "nprobe": None, "recall": 1.0, "trained": int(index.ntotal), "requested": AUTO,
                "budget": None, **{k: v for k, v in (info or {}).items() if k in known}}
    catalogue.set_settings(
        {
            GENERATION_KEY: {
                **recorded, "generation": generation, "count": int(index.ntotal), "dim": dim,
                "version": version, "bytes": size, **describe(index),
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


class VectorIndex:
    """The in-memory FAISS index of one index directory, kept in step with SQLite. Thread-safe.

    Readers call `refresh`, which loads a new generation when the writer saved one (mapping an IVF file
    rather than reading it, or rebuilding from SQLite when the file does not match) and, between
    generations, adds the rows committed since (beside a mapped IVF index, in a small flat delta).
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
                self._set(load(self.catalogue, dim, mmap=True), version)
                if self._loaded is not None and self._loaded.rebuilt and self._loaded.count:
                    self._persist_rebuild(dim)
            elif version != self._version:
                self._add_since(version)
            assert self._loaded is not None
            return self._loaded

    def _add_since(self, version: int) -> None:
        """Rows a running `index` committed since the last look: added without a rebuild. Rows it deleted
        stay in memory until the next generation; search drops them (SQLite no longer has them)."""
        loaded = self._loaded
        assert loaded is not None
        for ids, vecs in self.catalogue.iter_vectors(after=self._max_id):
            target = loaded.index
            if not is_flat(loaded.index):  # a mapped IVF index is read-only
                if loaded.delta is None:
                    loaded.delta = make_index(loaded.d, FLAT)
                target = loaded.delta
            target.add_with_ids(np.ascontiguousarray(vecs), ids)
            self._max_id = int(ids[-1])
        self._version = version

    def sync(self, dim: int, *, force: bool, changes: Changes | None = None, requested: str | None = None,
             budget: int | None = None) -> list[str]:
        """Make the file match SQLite (the caller holds the writer lock): a new generation when the
        catalogue changed (`force`), the file is missing or stale, or another index kind is `requested`
        (None: the one recorded); else only old generations go. `changes`, what this run changed since the
        file was current, lets an IVF index be updated in place. Returns warnings for the run's report.
        Raises IndexTypeError, DinosearchError."""
        state = self.catalogue.get_setting(GENERATION_KEY) or {}
        version = self.catalogue.version()
        same_kind = requested is None or (requested == (state.get("requested") or AUTO) and budget == state.get("budget"))
        requested = requested or state.get("requested") or AUTO
        budget = budget if budget is not None or not same_kind else state.get("budget")
        if same_kind and not force and state.get("version") == version and vectors_file(self.catalogue.dir, state.get("generation", 0)).exists():
            remove_stale(self.catalogue.dir, keep=int(state.get("generation", 0)))  # a killed run's leftovers
            return []
        warnings: list[str] = []
        index = self._in_place(dim, state, changes) if same_kind and changes is not None else None
        if index is not None:
            reason = building.retrain_reason(state, int(index.ntotal))
            if reason is None:
                info = dict(state)
            else:
                index = None
                warnings.append(f"{reason}: it was trained again")
        if index is None:
            built = build_generation(self.catalogue, dim, requested=requested, budget=budget)
            index, info = built.index, built.info
        generation = save(index, self.catalogue, dim, version, info)
        with self._lock:
            _set_nprobe(index, info.get("nprobe"))
            self._set(LoadedVectors(index, generation, rebuilt=False, info=info, fetch=self.catalogue.vectors_by_id), version)
        return warnings

    def _in_place(self, dim: int, state: dict[str, Any], changes: Changes) -> Any:
        """The current IVF file with this run's changes applied, or None when it must be rebuilt instead
        (flat, not current when the run began, unreadable, or not matching SQLite afterwards)."""
        path = vectors_file(self.catalogue.dir, int(state.get("generation", 0)))
        if recorded_type(state) == FLAT or state.get("version") != changes.base_version or not path.exists():
            return None
        try:
            index = _read(path, mmap=False) if _size_matches(path, state) else None
        except Exception:  # noqa: BLE001 - whatever FAISS raises on a damaged file: rebuild
            return None
        if index is None or ivf_of(index) is None or index.d != dim or index.ntotal != state.get("count"):
            return None
        building.apply(index, self.catalogue, changes)
        if index.ntotal != self.catalogue.count_images():
            return None
        return index

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
                    self._loaded.generation = save(self._loaded.index, self.catalogue, dim, self._version, self._loaded.info)
        except (IndexLockedError, DinosearchError, OSError):
            pass

    def measure_recall(self, dim: int) -> float:
        """recall@10 of the loaded index at its nprobe, measured now on a fresh sample of the collection's
        own vectors against exact search (1.0 for an exact index, without measuring)."""
        loaded = self.refresh(dim)
        if is_flat(loaded.index):
            return 1.0
        return recall.measure(self.catalogue, lambda q, k, p: search(loaded, q, k, nprobe=p)[1], ivf_of(loaded.index).nprobe)
