"""The FAISS index: a cache of the catalogue's vectors, keyed by row id, written atomically.

The file is `vectors-<generation>.faiss`; its generation, count and dim go into SQLite only after the
file is durably in place. On load, any mismatch with SQLite means a rebuild from SQLite, never wrong ids.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DinosearchError
from .catalogue import Catalogue
from .layout import GENERATION_KEY, vectors_current, vectors_file


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


def empty_index(dim: int) -> Any:
    faiss = _faiss()
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def max_id(index: Any) -> int:
    if index.ntotal == 0:
        return 0
    return int(_faiss().vector_to_array(index.id_map).max())


def build(catalogue: Catalogue, dim: int) -> Any:
    """A fresh index of every vector in SQLite."""
    index = empty_index(dim)
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
    if not isinstance(index, faiss.IndexIDMap2):
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
        {GENERATION_KEY: {"generation": generation, "count": int(index.ntotal), "dim": dim, "version": version, "bytes": size}}
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
