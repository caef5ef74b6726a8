"""What an index holds, read with plain sqlite3 (no migration, no repair, no side effect), and the checks
that a finished index is consistent: SQLite rows == FAISS vectors, every image its own top hit."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DB = "catalogue.sqlite3"


@dataclass(frozen=True)
class Row:
    id: int
    content_hash: str
    size: int
    mtime_ns: int
    indexed_at: float
    vector: bytes


def rows(index_dir: Path) -> dict[str, Row]:
    db = index_dir / DB
    if not db.exists():
        return {}
    con = sqlite3.connect(db)
    try:
        found = con.execute("SELECT id, path, content_hash, size, mtime_ns, indexed_at, vector FROM images").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # killed before the schema existed
            return {}
        raise
    finally:
        con.close()
    return {os.fsdecode(p): Row(i, h, s, m, t, v) for i, p, h, s, m, t, v in found}


def failure_count(index_dir: Path) -> int:
    con = sqlite3.connect(index_dir / DB)
    try:
        return con.execute("SELECT count(*) FROM failures").fetchone()[0]
    finally:
        con.close()


def schema_is_current(index_dir: Path) -> bool:
    from dinosearch.store.schema import SCHEMA_REVISION

    if not (index_dir / DB).exists():
        return False
    con = sqlite3.connect(index_dir / DB)
    try:
        return con.execute("SELECT version_num FROM alembic_version").fetchone() == (SCHEMA_REVISION,)
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()


def check_reader_view(index_dir: Path, dim: int) -> None:
    """What a reader (query, server) would load right now: exactly SQLite's ids and vectors."""
    from dinosearch.store import vectorindex as vectors
    from dinosearch.store.catalogue import Catalogue

    if not schema_is_current(index_dir):
        return
    cat = Catalogue(index_dir, create=False)
    try:
        loaded = vectors.load(cat, dim)
        _assert_faiss_equals_sqlite(loaded.index, index_dir)
    finally:
        cat.close()


def _assert_faiss_equals_sqlite(index, index_dir: Path) -> None:
    """Same ids; each id's vector (a flat index's, exactly; an IVF index's code, that of the stored vector)."""
    from dinosearch.store.kinds import holds, ids_of

    stored = rows(index_dir)
    ids = np.sort(ids_of(index))
    assert ids.tolist() == sorted(r.id for r in stored.values()), "FAISS ids != SQLite ids"
    for r in stored.values():
        assert holds(index, r.id, np.frombuffer(r.vector, "<f4").astype(np.float32)), f"id {r.id}: another vector"


def check_final(index_dir: Path, reference: dict[str, Row], dim: int) -> None:
    """A clean run's result: same paths, contents and vectors; FAISS file == SQLite; each image is its own top hit."""
    import faiss

    from dinosearch.store import vectorindex as vectors
    from dinosearch.store.catalogue import Catalogue

    got = rows(index_dir)
    assert set(got) == set(reference), f"paths differ: {set(got) ^ set(reference)}"
    for path, r in got.items():
        ref = reference[path]
        assert (r.content_hash, r.size, r.mtime_ns) == (ref.content_hash, ref.size, ref.mtime_ns), path
        np.testing.assert_allclose(np.frombuffer(r.vector, "<f4"), np.frombuffer(ref.vector, "<f4"), atol=1e-5, err_msg=path)
    assert failure_count(index_dir) == 0
    cat = Catalogue(index_dir, create=False)
    try:
        state = cat.get_setting(vectors.GENERATION_KEY)
        current = vectors.vectors_file(index_dir, state["generation"])
        leftovers = {p.name for p in index_dir.iterdir()} - {DB, DB + "-wal", DB + "-shm", "writer.lock", current.name}
        assert not leftovers, f"left behind: {leftovers}"
        on_disk = faiss.read_index(str(current))
        _assert_faiss_equals_sqlite(on_disk, index_dir)
        loaded = vectors.load(cat, dim)
        assert not loaded.rebuilt, "the FAISS file on disk does not match SQLite"
        ids = np.array([r.id for r in got.values()], dtype=np.int64)
        queries = np.stack([np.frombuffer(r.vector, "<f4") for r in got.values()]).astype(np.float32)
        _, top = vectors.search(loaded, queries, 1)  # as the product searches (an IVF index re-ranks exactly)
    finally:
        cat.close()
    assert np.array_equal(top[:, 0], ids), "an image did not find itself at rank 1"
