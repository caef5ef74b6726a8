"""Storage: migrations, schema parity, newer schemas refused, FAISS cache rebuilt from SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine

from dinosearch.errors import SchemaTooNewError
from dinosearch.store import vectorindex as vector_store
from dinosearch.store.catalogue import Catalogue, ImageRow, vector_bytes
from dinosearch.store.layout import peek_vectors
from dinosearch.store.migrate import head
from dinosearch.store.schema import SCHEMA_REVISION, metadata


def test_code_writes_the_newest_migration() -> None:
    assert head() == SCHEMA_REVISION


def test_migrations_from_empty_database_match_the_schema(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    cat = Catalogue(tmp_path / "ix")
    with cat.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    with sqlite3.connect(cat.db_path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SCHEMA_REVISION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    cat = Catalogue(tmp_path / "ix")
    cat.close()
    with sqlite3.connect(tmp_path / "ix" / "catalogue.sqlite3") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    with pytest.raises(SchemaTooNewError, match="newer dinosearch"):
        Catalogue(tmp_path / "ix")


def _fill(cat: Catalogue, n: int, dim: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    cat.write([ImageRow(f"/p/{i}.jpg", "/p", 1, 1, f"h{i}", vector_bytes(v)) for i, v in enumerate(vecs)], [])
    return vecs


def test_ids_are_never_reused(tmp_path: Path) -> None:
    cat = Catalogue(tmp_path / "ix")
    _fill(cat, 3)
    cat.remove(["/p/2.jpg"])
    [new_id] = cat.write([ImageRow("/p/new.jpg", "/p", 1, 1, "hn", vector_bytes(np.ones(8)))], [])
    assert new_id == 4


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "other-dim", "stale"])
def test_faiss_file_that_does_not_match_is_rebuilt(tmp_path: Path, damage: str) -> None:
    cat = Catalogue(tmp_path / "ix")
    vecs = _fill(cat, 20)
    gen = vector_store.save(vector_store.build(cat, 8), cat, 8, cat.version())
    path = vector_store.vectors_file(cat.dir, gen)
    assert not vector_store.load(cat, 8).rebuilt
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "other-dim":
        other = vector_store.empty_index(16)
        other.add_with_ids(np.ones((20, 16), np.float32), np.arange(1, 21))
        import faiss

        faiss.write_index(other, str(path))
    elif damage == "stale":  # rows rewritten in place after the file was written: same ids, new vectors
        cat.write([ImageRow("/p/0.jpg", "/p", 2, 2, "changed", vector_bytes(-vecs[0]), id=1)], [])
    loaded = vector_store.load(cat, 8)
    assert loaded.rebuilt and loaded.count == 20
    scores, ids = vector_store.search(loaded.index, vecs[5:6], 1)
    assert ids[0][0] == 6 and scores[0][0] == pytest.approx(1.0, abs=1e-5)


def test_sqlite_file_is_a_real_database_readable_by_sqlalchemy(tmp_path: Path) -> None:
    cat = Catalogue(tmp_path / "ix")
    _fill(cat, 2)
    engine = create_engine(f"sqlite:///{cat.db_path}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM images").scalar() == 2


def test_header_peek_agrees_with_faiss(tmp_path: Path) -> None:
    cat = Catalogue(tmp_path / "ix")
    _fill(cat, 7)
    gen = vector_store.save(vector_store.build(cat, 8), cat, 8, cat.version())
    assert peek_vectors(vector_store.vectors_file(cat.dir, gen)) == (8, 7)
    assert vector_store.count_if_current(cat, 8) == 7
    cat.remove(["/p/1.jpg"])
    assert vector_store.count_if_current(cat, 8) is None  # stale: stats loads (and rebuilds) instead


def test_cached_reads_see_every_commit_of_another_connection(tmp_path: Path) -> None:
    """Settings and labelled ids are cached until something commits; a commit by another process (here
    another Catalogue, i.e. other connections) or by this one's own writes is seen at once."""
    reader, writer = Catalogue(tmp_path / "ix"), Catalogue(tmp_path / "ix")
    _fill(writer, 3)
    writer.set_settings({"probe": {"n": 1}})
    assert reader.get_setting("probe") == {"n": 1}
    assert len(reader.labelled_ids("label")) == 0
    first = reader.get_setting("probe")
    first["n"] = 99  # a caller's copy: mutating it changes no cached value
    assert reader.get_setting("probe") == {"n": 1}
    writer.set_settings({"probe": {"n": 2}})
    assert reader.get_setting("probe") == {"n": 2}
    writer.set_metadata({"/p/0.jpg": {"label": "cat"}, "/p/2.jpg": {"label": "dog"}})
    ids = reader.labelled_ids("label")
    assert ids.tolist() == reader.labelled("label")[0].tolist() and len(ids) == 2
    assert reader.labelled_ids("label") is ids  # nothing committed since: the same array (and FAISS selector)
    writer.remove(["/p/0.jpg"])
    assert len(reader.labelled_ids("label")) == 1
    reader.set_settings({"probe": {"n": 3}})  # its own write
    assert reader.get_setting("probe") == {"n": 3}
    raw = sqlite3.connect(tmp_path / "ix" / "catalogue.sqlite3")  # another process's plain connection
    raw.execute("UPDATE settings SET value = '{\"n\": 4}' WHERE key = 'probe'")
    raw.commit()
    raw.close()
    assert reader.get_setting("probe") == {"n": 4}
    reader.close()
    writer.close()
