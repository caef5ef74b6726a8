"""Labels: folder names at index time, the similarity-weighted k-NN vote, `dinosearch label`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dinosearch.api import Index
from dinosearch.cli import app
from dinosearch.errors import NoLabelsError
from dinosearch.label import TEMPERATURE, folder_label, predict, vote
from dinosearch.records import Hit
from tests.colour_model import ColourEmbedder, solid, unit
from tests.images import photo, save

runner = CliRunner()


def test_folder_label_is_the_parent_folder_name(tmp_path: Path) -> None:
    assert folder_label(str(tmp_path / "dogs" / "beagle" / "1.jpg")) == "beagle"


def test_index_label_from_folder_and_a_metadata_label_wins(tmp_path: Path) -> None:
    root = tmp_path / "set"
    save(photo(seed=1), root / "cats" / "a.jpg")
    save(photo(seed=2), root / "dogs" / "b.jpg")
    save(photo(seed=3), root / "top.jpg")  # directly in the root: the root's own name
    meta = tmp_path / "m.csv"
    meta.write_text("path,label,title\ndogs/b.jpg,wolf,B\n")
    with Index(tmp_path / "ix", embedder=ColourEmbedder()) as ix:
        report = ix.add(root, metadata=meta, label_from_folder=True)
        assert report.labelled == 3 and report.to_dict()["labelled"] == 3
        by_name = {Path(h.path).name: h.metadata for h in ix.search_vector(unit((1, 1, 1)), k=3)}
    assert by_name["a.jpg"] == {"label": "cats"}
    assert by_name["b.jpg"] == {"label": "wolf", "title": "B"}  # the file's label, its other columns kept
    assert by_name["top.jpg"] == {"label": "set"}


def test_index_cli_label_from_folder(env: dict, tmp_path: Path) -> None:
    save(photo(seed=1), tmp_path / "set" / "cats" / "a.jpg")
    r = runner.invoke(app, ["index", str(tmp_path / "set"), "--label-from-folder", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["labelled"] == 1
    r = runner.invoke(app, ["index", str(tmp_path / "set"), "--json"])
    assert "labelled" not in json.loads(r.stdout)  # without the flag the report is as before


def test_vote_weights_by_similarity() -> None:
    votes = vote([(0.9, "a"), (0.5, "b"), (0.5, "b")])
    wa, wb = math.exp(0.9 / TEMPERATURE), 2 * math.exp(0.5 / TEMPERATURE)
    assert [v.value for v in votes] == ["a", "b"]
    assert votes[0].confidence == pytest.approx(wa / (wa + wb))
    assert votes[1].votes == 2
    assert sum(v.confidence for v in votes) == pytest.approx(1.0)
    # many distant voters outvote one close one only when they are close enough
    assert vote([(0.9, "a"), (0.88, "b"), (0.88, "b")])[0].value == "b"


def test_vote_ties_are_broken_by_nearest_voter_then_by_value() -> None:
    tied = vote([(0.8, "b"), (0.8, "a")])
    assert [v.value for v in tied] == ["a", "b"] and tied[0].confidence == pytest.approx(0.5)
    assert [v.value for v in vote([(0.8, "a"), (0.8, "b")])] == ["a", "b"]  # order of input does not matter
    # equal total weight: one voter at s against two at s - T ln 2; the one with the nearer voter wins
    s = 0.7
    far = s - TEMPERATURE * math.log(2)
    for pairs in ([(far, "a"), (far, "a"), (s, "z")], [(s, "z"), (far, "a"), (far, "a")]):
        votes = vote(pairs)
        assert votes[0].value == "z" and votes[0].confidence == pytest.approx(0.5)


def test_unlabelled_neighbours_are_ignored() -> None:
    hits = [
        Hit(1, 1, 0.99, "/x/1.jpg", None),
        Hit(2, 2, 0.95, "/x/2.jpg", {"title": "no label"}),
        Hit(3, 3, 0.90, "/x/3.jpg", {"label": ""}),
        Hit(4, 4, 0.50, "/x/4.jpg", {"label": "cat"}),
    ]
    p = predict(hits, by="label", query="q.jpg")
    assert p.value == "cat" and p.labels[0].confidence == 1.0
    assert [h.id for h in p.neighbours] == [4]
    assert predict(hits[:3], by="label", query="q").labels == ()


def _colour_index(tmp_path: Path) -> Path:
    """reds, greens and one unlabelled blue; vectors are the colours' directions."""
    root = tmp_path / "set"
    for name, rgb in {"r1": (250, 10, 10), "r2": (240, 30, 20), "g1": (10, 250, 10), "g2": (30, 240, 20)}.items():
        solid(root / ("red" if name[0] == "r" else "green") / f"{name}.png", rgb)
    with Index(tmp_path / "ix", embedder=ColourEmbedder()) as ix:
        ix.add(root, label_from_folder=True)
        ix.add(solid(tmp_path / "loose" / "b.png", (10, 10, 250)))  # indexed without a label
    return root


def test_index_label_votes_among_labelled_neighbours(tmp_path: Path) -> None:
    root = _colour_index(tmp_path)
    query = solid(tmp_path / "q" / "orange.png", (250, 120, 10))
    with Index(tmp_path / "ix", embedder=ColourEmbedder()) as ix:
        (p,) = ix.label(query, k=3)
        assert p.value == "red" and p.query == str(query)
        assert len(p.neighbours) == 3 and all(h.metadata["label"] in ("red", "green") for h in p.neighbours)
        q = unit((250, 120, 10))
        scores = {Path(h.path).stem: h.score for h in p.neighbours}
        assert scores["r1"] == pytest.approx(float(q @ unit((250, 10, 10))), abs=1e-5)
        w = {s: math.exp(scores[s] / TEMPERATURE) for s in scores}
        red = sum(v for s, v in w.items() if s.startswith("r"))
        assert p.labels[0].confidence == pytest.approx(red / sum(w.values()), rel=1e-4)
        # an indexed image does not vote for itself
        (own,) = ix.label(root / "red" / "r1.png", k=10)
        assert "r1" not in {Path(h.path).stem for h in own.neighbours} and len(own.neighbours) == 3
        with pytest.raises(NoLabelsError, match="'colour'"):
            ix.label(query, by="colour")


def test_label_cli_text_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _colour_index(tmp_path)
    monkeypatch.setattr("dinosearch.embed.Dinov2Embedder", lambda *a, **kw: ColourEmbedder())
    query = solid(tmp_path / "q" / "lime.png", (60, 250, 10))
    ix = str(tmp_path / "ix")
    r = runner.invoke(app, ["label", str(query), "--index", ix, "-k", "2", "--json"])
    assert r.exit_code == 0, r.stderr
    (pred,) = json.loads(r.stdout)["predictions"]
    assert pred["label"] == "green" and pred["labels"][0] == {"value": "green", "confidence": 1.0, "votes": 2}
    assert [n["value"] for n in pred["neighbours"]] == ["green", "green"] and pred["neighbours"][0]["rank"] == 1
    r = runner.invoke(app, ["label", str(query), "--index", ix, "-k", "2"])
    lines = r.stdout.splitlines()
    assert lines[0] == f"{query}: green 1.00" and len(lines) == 3 and "green" in lines[1]
    r = runner.invoke(app, ["label", str(query), "--index", ix, "--by", "nope"])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "'nope'" in r.stderr
