"""Duplicates: exact and near groups, no chaining, keeper rules, --under, the CLI's formats and errors."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from dinosearch.duplicates import DuplicateMember, KeepRule, star_groups
from dinosearch.errors import DinosearchError
from dinosearch.neighbours import build_search_index, similar_pairs
from tests.conftest import run_cli
from tests.dup_support import TINY_NEAR, build, names


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, Path]:
    return build(tmp_path_factory.mktemp("dups"), tiny_model)


def open_index(index_dir: Path):  # noqa: ANN201
    from dinosearch.api import Index

    return Index(index_dir, create=False)


# --- exact and near groups over a real index ---------------------------------------------------------
def test_exact_groups_are_files_with_the_same_content(tree: tuple[Path, Path]) -> None:
    top, index_dir = tree
    with open_index(index_dir) as ix:
        groups = ix.duplicates(level="exact")
    assert sorted(names(top, g) for g in groups) == [["a.jpg", "copies/a-copy.jpg"], ["other/c.jpg", "other/c-copy.jpg"]]
    for g in groups:
        assert [m.score for m in g.members] == [1.0, 1.0]
        # Same resolution and size: the older file is kept, and the reason says so.
        assert g.reason.startswith("oldest modification time (2020-09-13"), g.reason


def test_near_groups_hold_the_resized_and_reencoded_copies_and_no_other_photo(tree: tuple[Path, Path]) -> None:
    top, index_dir = tree
    with open_index(index_dir) as ix:
        groups = ix.duplicates(level="near", threshold=TINY_NEAR)
        vectors = {m.id: ix.catalogue.vector_of(m.id) for g in groups for m in g.members}
    assert [names(top, g) for g in groups] == [
        ["a.jpg", "copies/a-copy.jpg", "copies/a-small.jpg", "copies/a-q40.jpg"],
        ["other/c.jpg", "other/c-copy.jpg"],
    ]
    a = groups[0]
    assert a.duplicates[0].score == pytest.approx(1.0, abs=1e-6)  # the exact copy comes first
    for g in groups:
        for m in g.duplicates:  # every score is the cosine to the keeper, and within the threshold
            assert m.score == pytest.approx(float(vectors[g.keeper.id] @ vectors[m.id]), abs=1e-5)
            assert m.score >= TINY_NEAR


def test_under_scopes_keepers_and_duplicates_to_a_folder(tree: tuple[Path, Path]) -> None:
    top, index_dir = tree
    with open_index(index_dir) as ix:
        near = ix.duplicates(level="near", threshold=TINY_NEAR, under=top / "copies")
        exact = ix.duplicates(level="exact", under=top / "other")
        with pytest.raises(DinosearchError, match="no indexed image is under"):
            ix.duplicates(under=top / "nowhere")
    assert [names(top, g) for g in near] == [["copies/a-copy.jpg", "copies/a-small.jpg", "copies/a-q40.jpg"]]
    assert [names(top, g) for g in exact] == [["other/c.jpg", "other/c-copy.jpg"]]


@pytest.mark.parametrize(
    ("keep", "keeper", "reason"),
    [
        ("largest", "a.jpg", "largest resolution (640x480), then larger file ("),
        ("newest", "copies/a-small.jpg", "newest modification time"),
        ("oldest", "a.jpg", "oldest modification time"),
        ("path-prefix=COPIES", "copies/a-copy.jpg", "under "),
    ],
)
def test_keeper_rules(tree: tuple[Path, Path], keep: str, keeper: str, reason: str) -> None:
    top, index_dir = tree
    with open_index(index_dir) as ix:
        groups = ix.duplicates(level="near", threshold=TINY_NEAR, keep=keep.replace("COPIES", str(top / "copies")))
    first = names(top, groups[0])
    assert first[0] == keeper and sorted(first) == sorted(["a.jpg", "copies/a-copy.jpg", "copies/a-small.jpg", "copies/a-q40.jpg"])
    assert groups[0].reason.startswith(reason), groups[0].reason


def test_largest_prefers_resolution_then_file_size() -> None:
    rule = KeepRule.parse("largest")
    big = DuplicateMember(1, "/p/big.jpg", "/p", 1.0, 4000, 3000, 1_000, 5)
    small_heavy = DuplicateMember(2, "/p/small.png", "/p", 0.99, 400, 300, 9_000_000, 1)
    same_res_lighter = DuplicateMember(3, "/p/light.jpg", "/p", 0.99, 4000, 3000, 900, 1)
    assert sorted([small_heavy, same_res_lighter, big], key=rule.key)[0] is big
    assert rule.reason(big, [small_heavy, same_res_lighter]) == "largest resolution (4000x3000), then larger file (1,000 bytes)"
    with pytest.raises(DinosearchError, match="--keep takes"):
        KeepRule.parse("biggest")


# --- no chaining, and the k-NN search itself ------------------------------------------------------------
def _facts(ids: list[int], pixels: dict[int, int]) -> dict[int, dict]:
    return {i: {"path": f"/p/{i}.jpg", "root": "/p", "width": pixels[i], "height": 1, "size": 100, "mtime_ns": 0} for i in ids}


def _chain() -> tuple[np.ndarray, np.ndarray]:
    """A~B (0.95), B~C (0.95), A!~C (0.805) at threshold 0.9, plus an unrelated D."""
    theta = np.arccos(0.95)
    vecs = np.zeros((4, 8), np.float32)
    for row, angle in enumerate([0.0, theta, 2 * theta]):
        vecs[row, :2] = np.cos(angle), np.sin(angle)
    vecs[3, 5] = 1.0
    return np.array([1, 2, 3, 4], np.int64), vecs


@pytest.mark.parametrize(("best", "expected"), [(1, [[1, 2]]), (3, [[3, 2]]), (2, [[2, 1, 3]])])
def test_groups_never_chain(best: int, expected: list[list[int]]) -> None:
    ids, vecs = _chain()
    chunks = lambda: iter([(ids, vecs)])  # noqa: E731
    pairs = similar_pairs(build_search_index(chunks, count=4, dim=8), chunks, threshold=0.9)
    assert sorted(zip(pairs[0].tolist(), pairs[1].tolist())) == [(1, 2), (2, 3)]
    pixels = {1: 10, 2: 10, 3: 10, 4: 10, best: 99}
    groups = star_groups(pairs, _facts([1, 2, 3, 4], pixels), KeepRule.parse("largest"))
    assert [[m.id for m in g.members] for g in groups] == [sorted(e, key=lambda i: (i != best, i)) for e in expected]
    for g in groups:  # every member is within the threshold of its keeper: A and C never share B's absence
        for m in g.duplicates:
            assert float(vecs[g.keeper.id - 1] @ vecs[m.id - 1]) >= 0.9


def test_the_ivf_pass_finds_the_same_pairs_as_the_exact_one() -> None:
    rng = np.random.default_rng(0)
    n, dim = 4000, 32
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs[1::2] = vecs[0::2] + rng.normal(scale=0.05, size=(n // 2, dim)).astype(np.float32)  # planted copies
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(10, 10 + n, dtype=np.int64)

    def chunks():  # noqa: ANN202
        for s in range(0, n, 1000):
            yield ids[s : s + 1000], vecs[s : s + 1000]

    exact = similar_pairs(build_search_index(chunks, count=n, dim=dim), chunks, threshold=0.95)
    ivf_index = build_search_index(chunks, count=n, dim=dim, exact_max=100)
    assert "IVF" in type(ivf_index).__name__
    ivf = similar_pairs(ivf_index, chunks, threshold=0.95, query_chunk=300)
    planted = {(int(ids[i]), int(ids[i + 1])) for i in range(0, n, 2)}
    assert set(zip(exact[0].tolist(), exact[1].tolist())) == planted
    assert set(zip(ivf[0].tolist(), ivf[1].tolist())) == planted
    assert np.allclose(np.sort(ivf[2]), np.sort(exact[2]), atol=1e-5)


def test_more_copies_than_k_stay_in_one_group() -> None:
    vecs = np.tile(np.eye(1, 16, dtype=np.float32), (80, 1))  # 80 identical vectors: k=32 is not enough
    ids = np.arange(1, 81, dtype=np.int64)
    chunks = lambda: iter([(ids, vecs)])  # noqa: E731
    pairs = similar_pairs(build_search_index(chunks, count=80, dim=16), chunks, threshold=0.99, k=8)
    groups = star_groups(pairs, _facts(list(range(1, 81)), {i: 1 for i in range(1, 81)}), KeepRule.parse("largest"))
    assert len(groups) == 1 and len(groups[0].members) == 80


# --- the command line -------------------------------------------------------------------------------------
def test_cli_json_and_csv_show_the_same_groups(tree: tuple[Path, Path], env: dict[str, str]) -> None:
    top, index_dir = tree
    args = ["duplicates", "--index", str(index_dir), "--threshold", str(TINY_NEAR)]
    as_json = json.loads(run_cli(*args, "--json", env=env, check=True).stdout)
    assert as_json["level"] == "near" and as_json["threshold"] == TINY_NEAR and as_json["keep"] == "largest"
    groups = as_json["groups"]
    assert [g["keeper"]["path"] for g in groups] == [str(top / "a.jpg"), str(top / "other/c.jpg")]
    assert set(groups[0]["keeper"]) == {"id", "path", "score", "width", "height", "size", "mtime"}
    assert groups[0]["keeper"]["mtime"] == "2020-09-13T12:26:40+00:00"

    rows = list(csv.DictReader(io.StringIO(run_cli(*args, "--csv", env=env, check=True).stdout)))
    assert [(r["group"], r["role"], r["path"]) for r in rows] == [
        (str(n), "keeper" if i == 0 else "duplicate", m["path"])
        for n, g in enumerate(groups, 1)
        for i, m in enumerate([g["keeper"], *g["duplicates"]])
    ]
    assert rows[0]["reason"] == groups[0]["reason"] and rows[1]["reason"] == ""

    text = run_cli(*args, env=env, check=True).stdout
    assert text.splitlines()[0].startswith("group 1: 4 images; keep the first: largest resolution (640x480), then larger file")
    assert text.splitlines()[-1] == f"2 groups, 4 duplicates at level near (cosine >= {TINY_NEAR:.3f})"


def test_cli_says_so_when_there_are_no_duplicates(tree: tuple[Path, Path], env: dict[str, str]) -> None:
    top, index_dir = tree
    proc = run_cli("duplicates", "--index", str(index_dir), "--level", "exact", "--under", str(top / "copies"), env=env, check=True)
    assert proc.stdout == "no duplicates at level exact (same content)\n"
    proc = run_cli("duplicates", "--index", str(index_dir), "--level", "exact", "--under", str(top / "copies"), "--json", env=env)
    assert json.loads(proc.stdout)["groups"] == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--level", "exact", "--threshold", "0.9"], 1, "a threshold does not apply to the exact level"),
        (["--threshold", "1.5"], 1, "the threshold is a cosine in (0, 1]"),
        (["--keep", "biggest"], 1, "--keep takes largest, oldest, newest or path-prefix=PREFIX"),
        (["--under", "/nowhere/at/all"], 1, "no indexed image is under /nowhere/at/all"),
        (["--json", "--csv"], 2, "give --json or --csv, not both"),
    ],
)
def test_cli_bad_input_is_one_line(tree: tuple[Path, Path], env: dict[str, str], args: list[str], code: int, message: str) -> None:
    proc = run_cli("duplicates", "--index", str(tree[1]), *args, env=env)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    if code == 1:
        assert proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_cli_without_an_index_is_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    proc = run_cli("duplicates", "--index", str(tmp_path / "none"), env=env)
    assert proc.returncode == 1 and proc.stderr.startswith("dinosearch: no index at") and not os.path.exists(tmp_path / "none")
