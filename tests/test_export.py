"""`dinosearch export`: each format read back and compared with the index, row by row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dinosearch.api import Index
from dinosearch.cli import app
from tests.colour_model import ColourEmbedder, solid

runner = CliRunner()


@pytest.fixture()
def index(tmp_path: Path) -> Path:
    root = tmp_path / "set"
    for i, rgb in enumerate([(250, 10, 10), (10, 250, 10), (10, 10, 250), (120, 130, 140)]):
        solid(root / ("warm" if i < 2 else "cool") / f"é{i}.png", rgb)
    meta = tmp_path / "m.csv"
    meta.write_text("path,title\nwarm/é0.png,Red\n")
    with Index(tmp_path / "ix", embedder=ColourEmbedder()) as ix:
        ix.add(root, metadata=meta)
        ix.catalogue.remove([str(root / "warm" / "é1.png")])  # a gap in the ids
    return tmp_path / "ix"


def truth(index_dir: Path) -> tuple[list[int], list[str], list, np.ndarray]:
    with Index(index_dir) as ix:
        ids, vecs = next(ix.catalogue.iter_vectors())
        rows = ix.catalogue.rows_by_id(ids)
    return [int(i) for i in ids], [rows[i]["path"] for i in ids], [rows[i]["metadata"] for i in ids], vecs


def test_npy_round_trip(index: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "v.npy"
    out.parent.mkdir()
    r = runner.invoke(app, ["export", "--index", str(index), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"format": "npy", "files": [str(out), str(tmp_path / "out" / "v.ids.jsonl")], "images": 3, "dim": 3}
    ids, paths, metas, vecs = truth(index)
    arr = np.load(out)
    assert arr.dtype == np.dtype("<f4") and arr.shape == (3, 3)
    np.testing.assert_array_equal(arr, vecs)
    side = [json.loads(line) for line in (tmp_path / "out" / "v.ids.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [s["id"] for s in side] == ids and [s["path"] for s in side] == paths and [s["metadata"] for s in side] == metas
    assert sorted(p.name for p in out.parent.iterdir()) == ["v.ids.jsonl", "v.npy"]  # no temporary files left


def test_jsonl_round_trip(index: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.jsonl"
    with Index(index) as ix:
        report = ix.export(out, format="jsonl")
    assert report.images == 3
    ids, paths, metas, vecs = truth(index)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [x["id"] for x in lines] == ids and [x["path"] for x in lines] == paths and [x["metadata"] for x in lines] == metas
    np.testing.assert_array_equal(np.asarray([x["vector"] for x in lines], dtype=np.float32), vecs)  # exact


def test_parquet_round_trip(index: Path, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="parquet export needs pyarrow (the 'parquet' extra)")
    out = tmp_path / "v.parquet"
    r = runner.invoke(app, ["export", "--index", str(index), "--format", "parquet", "-o", str(out)])
    assert r.exit_code == 0 and "3 images (3-d vectors) written to" in r.stdout
    table = pq.read_table(out)
    ids, paths, metas, vecs = truth(index)
    assert table.column("id").to_pylist() == ids and table.column("path").to_pylist() == paths
    assert [None if m is None else json.loads(m) for m in table.column("metadata").to_pylist()] == metas
    np.testing.assert_array_equal(np.asarray(table.column("vector").to_pylist(), dtype=np.float32), vecs)
    model = json.loads(table.schema.metadata[b"dinosearch.model"])
    assert model["model"] == "mean-colour" and model["dim"] == 3


def test_export_errors_are_one_line(index: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["export", "--index", str(index), "-o", str(tmp_path / "missing" / "v.npy")])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "cannot write" in r.stderr
    r = runner.invoke(app, ["export", "--index", str(index), "--format", "csv"])
    assert r.exit_code == 2
    Index(tmp_path / "empty").close()
    r = runner.invoke(app, ["export", "--index", str(tmp_path / "empty")])
    assert r.exit_code == 1 and "holds no images" in r.stderr
