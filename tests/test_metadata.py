"""Catalogue metadata: CSV / JSON lines joined on `path`, shown by query, filterable before top-k."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from dinosearch.api import Index
from dinosearch.cli import app

DATA = Path(__file__).parent.parent / "data"
runner = CliRunner()


def catalogue(tmp_path: Path) -> Path:
    shutil.copytree(DATA / "samples", tmp_path / "catalog")
    return tmp_path / "catalog"


def test_csv_metadata_filters_and_output(env: dict, tmp_path: Path) -> None:
    cat = catalogue(tmp_path)
    csv_file = tmp_path / "products.csv"
    csv_file.write_text((DATA / "products.csv").read_text() + "ghost.jpg,Ghost,1.00,bag,grey,x\n")
    r = runner.invoke(app, ["index", str(cat), "--metadata", str(csv_file), "--json"])
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["metadata"] == {"matched": 16, "unknown": ["ghost.jpg"]}
    assert "ghost.jpg" in r.stderr

    r = runner.invoke(app, ["query", str(cat / "bag-red.jpg"), "-k", "5", "--where", "category=mug", "--json"])
    results = json.loads(r.stdout)["results"]
    assert len(results) == 4  # k=5 asked, exactly 4 mugs exist: the filter applied before the cut
    assert all(x["metadata"]["category"] == "mug" for x in results)
    assert results[0]["metadata"]["title"].endswith("mug")

    r = runner.invoke(app, ["query", str(cat / "bag-red.jpg"), "-k", "2", "--where", "category=bag", "--where", "colour=blue"])
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "Blue bag" in lines[0]

    r = runner.invoke(app, ["query", str(cat / "bag-red.jpg"), "--where", "nonsense"])
    assert r.exit_code == 1 and "key=value" in r.stderr


def test_jsonl_metadata_through_the_library(tiny_model: str, tmp_path: Path) -> None:
    cat = catalogue(tmp_path)
    jl = tmp_path / "m.jsonl"
    jl.write_text("\n".join(json.dumps({"path": f"lamp-{c}.jpg", "sku": i, "title": f"Lamp {c}"}) for i, c in enumerate(["red", "tan"])))
    with Index(tmp_path / "ix", model=tiny_model, device="cpu") as ix:
        report = ix.add(cat, metadata=jl)
        assert report.metadata_matched == 2 and report.metadata_unknown == ()
        hits = ix.search(cat / "lamp-blue.jpg", k=3, where={"sku": "1"})
        assert [h.metadata["title"] for h in hits] == ["Lamp tan"]
