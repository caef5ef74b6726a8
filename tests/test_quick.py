"""`stats` from SQLite alone: the same answer as the full path, or none at all when it can't be sure."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dinosearch.api import Index
from dinosearch.store.catalogue import ImageRow, vector_bytes
from dinosearch.store.quick import quick_stats

from .images import photo, save


@pytest.fixture()
def built(tmp_path: Path, tiny_model: str) -> Path:
    for s in range(4):
        save(photo(320, 240, seed=s), tmp_path / "photos" / f"p{s}.jpg")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with Index(tmp_path / "ix", model=tiny_model, device="cpu", workers=1) as ix:
        ix.add(tmp_path / "photos")
    return tmp_path / "ix"


def full_stats(index_dir: Path) -> dict:
    with Index(index_dir, create=False) as ix:
        return ix.stats().to_dict()


def test_same_answer_as_the_full_path(built: Path) -> None:
    quick = quick_stats(built)
    assert quick is not None
    assert quick.to_dict() == full_stats(built)
    assert (quick.images, quick.vectors, quick.failed, quick.dim) == (4, 4, 1, 32)


def test_a_new_empty_index_has_no_model(tmp_path: Path) -> None:
    Index(tmp_path / "ix").close()
    quick = quick_stats(tmp_path / "ix")
    assert quick is not None and quick.to_dict() == full_stats(tmp_path / "ix")
    assert (quick.images, quick.vectors, quick.model) == (0, 0, None)


def test_no_index_is_no_answer(tmp_path: Path) -> None:
    assert quick_stats(tmp_path / "nothing") is None
    assert not (tmp_path / "nothing").exists()  # and nothing was created


def test_faiss_file_behind_sqlite_is_left_to_the_full_path(built: Path) -> None:
    """A write the FAISS file hasn't caught up with (a run killed before its last generation)."""
    with Index(built, create=False) as ix:
        ix.catalogue.write([ImageRow("/elsewhere/x.jpg", "/elsewhere", 1, 1, "hx", vector_bytes([1.0] + [0.0] * 31))], [])
    assert quick_stats(built) is None
    assert full_stats(built)["vectors"] == 5  # the full path rebuilt from SQLite ...
    assert quick_stats(built).to_dict() == full_stats(built)  # ... and then both agree again


@pytest.mark.parametrize("damage", ["truncate", "other-dim"])
def test_a_faiss_header_that_does_not_match_is_no_answer(built: Path, damage: str) -> None:
    [faiss_file] = built.glob("vectors-*.faiss")
    data = faiss_file.read_bytes()
    faiss_file.write_bytes(data[:10] if damage == "truncate" else data[:4] + (16).to_bytes(4, "little") + data[8:])
    assert quick_stats(built) is None
    assert full_stats(built)["vectors"] == 4


def test_an_older_schema_is_left_to_the_full_path(built: Path) -> None:
    with sqlite3.connect(built / "catalogue.sqlite3") as db:
        db.execute("UPDATE alembic_version SET version_num = '0000_older'")
    assert quick_stats(built) is None


def test_it_never_writes(built: Path) -> None:
    def files() -> dict[str, bytes]:
        # SQLite's own -wal/-shm side files may appear: a reader of a WAL database shares them.
        return {p.name: p.read_bytes() for p in built.iterdir() if not p.name.endswith(("-wal", "-shm"))}

    before = files()
    assert quick_stats(built) is not None
    assert files() == before


def test_the_stats_command_imports_no_heavy_library(built: Path) -> None:
    """Start-up is the point: SQLAlchemy, NumPy, FAISS and torch stay unimported."""
    code = (
        "import runpy, sys, json\n"
        f"sys.argv = ['dinosearch', 'stats', '--json', '--index', {str(built)!r}]\n"
        "try:\n"
        "    runpy.run_module('dinosearch', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = ('sqlalchemy', 'numpy', 'faiss', 'torch', 'PIL', 'alembic')\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert json.loads(out[0]) == full_stats(built)
    assert json.loads(out[-1]) == []
