"""`dinosearch eval`: leave-one-out figures on constructed data whose answers are worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dinosearch.api import Index
from dinosearch.cli import app
from dinosearch.evaluate import duplicate_scores, leave_one_out, original_stem
from tests.colour_model import ColourEmbedder, solid
from tests.test_label import _colour_index

runner = CliRunner()


def on_circle(*degrees: float) -> np.ndarray:
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


def test_recall_map_and_knn_by_hand() -> None:
    # a1 0deg, a2 10deg, b1 25deg, b2 90deg, and c 200deg whose value no other point has.
    # Nearest of each: a1 -> a2 (A), a2 -> a1 (A), b1 -> a2 (A: a miss), b2 -> b1 (B).
    # b1 finds b2 third: Recall@5 = 1. Votes (k=3): b1's two A neighbours outvote b2; the rest are right.
    scores, skipped = leave_one_out(on_circle(0, 10, 25, 90, 200), ["A", "A", "B", "B", "C"], k=3)
    assert skipped == 1 and scores.queries == 4
    assert scores.recall == {1: 0.75, 5: 1.0, 10: 1.0}
    assert scores.map_at_r == pytest.approx(0.75)
    assert scores.knn_accuracy == pytest.approx(0.75)


def test_map_at_r_counts_only_the_first_r_ranks() -> None:
    # q 0, x1 10, y 22, x2 30 (q, x1, x2 share a value; y is alone and skipped). R = 2 for each query:
    # q: x1 y x2 -> (1/2)(1/1) = 0.5;  x1: q y x2 -> 0.5;  x2: y x1 q -> (1/2)(1/2) = 0.25.
    scores, skipped = leave_one_out(on_circle(0, 10, 22, 30), ["A", "A", "B", "A"], k=1)
    assert skipped == 1
    assert scores.map_at_r == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert scores.recall[1] == pytest.approx(2 / 3)
    assert scores.knn_accuracy == pytest.approx(2 / 3)  # k = 1: the nearest neighbour's value


def test_sample_draws_the_same_queries_each_time() -> None:
    rng = np.random.default_rng(3)
    v = rng.normal(size=(60, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    labels = [str(i % 4) for i in range(60)]
    first, _ = leave_one_out(v, labels, sample=10, seed=1)
    again, _ = leave_one_out(v, labels, sample=10, seed=1)
    assert first == again and first.queries == 10
    # a small chunk size changes nothing
    assert leave_one_out(v, labels, max_cells=7)[0] == leave_one_out(v, labels)[0]


def test_duplicate_scores_and_copy_names() -> None:
    s = duplicate_scores([1, 3, None, 1])
    assert s.recall == {1: 0.5, 5: 0.75, 10: 0.75} and s.map_at_r == 0.5 and s.knn_accuracy is None
    assert original_stem("/c/bag-red~crop~2.jpg") == "bag-red" and original_stem("bag-red.png") == "bag-red"


def test_index_evaluate_with_copies(tmp_path: Path) -> None:
    _colour_index(tmp_path)
    copies = tmp_path / "copies"
    solid(copies / "r1~dark.png", (200, 10, 10))  # the direction of r1 exactly
    solid(copies / "g2~same.png", (30, 240, 20))
    solid(copies / "nobody~x.png", (1, 2, 3))
    with Index(tmp_path / "ix", embedder=ColourEmbedder()) as ix:
        result = ix.evaluate(k=3, copies=copies)
    assert (result.images, result.values, result.skipped) == (4, 2, 0)
    assert result.retrieval.recall == {1: 1.0, 5: 1.0, 10: 1.0} and result.retrieval.map_at_r == 1.0
    assert result.retrieval.knn_accuracy == 1.0
    assert result.duplicates is not None and result.duplicates.recall[1] == 1.0 and result.duplicates.queries == 2
    assert [Path(p).name for p in result.duplicates_skipped] == ["nobody~x.png"]


def test_eval_cli(tmp_path: Path) -> None:
    _colour_index(tmp_path)
    r = runner.invoke(app, ["eval", "--index", str(tmp_path / "ix"), "--json", "-k", "3"])
    assert r.exit_code == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["retrieval"] == {"queries": 4, "recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0, "map@r": 1.0, "knn_accuracy": 1.0}
    assert body["by"] == "label" and body["images"] == 4 and "duplicates" not in body
    r = runner.invoke(app, ["eval", "--index", str(tmp_path / "ix")])
    assert r.exit_code == 0 and "recall@1 1.000" in r.stdout and "4 queries" in r.stdout
    r = runner.invoke(app, ["eval", "--index", str(tmp_path / "ix"), "--by", "colour"])
    assert r.exit_code == 1 and "'colour'" in r.stderr
