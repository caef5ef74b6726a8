"""The approximate vector index, forced at a few thousand vectors: IVF built and tuned to a measured
recall, searched with an exact re-rank, updated in place by id, mapped by readers, filtered by an id
selector from the key/value metadata table; `stats` shows its type and recall."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dinosearch.store import vectorindex as vectors
from dinosearch.store.catalogue import Catalogue, ImageRow, vector_bytes
from dinosearch.store.kinds import ids_of, ivf_of
from dinosearch.store.recall import exact_search

DIM = 32
N = 3000
KIND = "IVF32,SQ8"


def clustered(n: int, seed: int, dim: int = DIM, clusters: int = 40) -> np.ndarray:
    """(n, dim) float32 unit vectors around random centres: the shape of real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    v = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def add_rows(cat: Catalogue, vecs: np.ndarray, start: int, meta: bool = True) -> list[int]:
    rows = [
        ImageRow(f"/photos/p{start + i}.jpg", "/photos", 1, 1, f"h{start + i}", vector_bytes(v),
                 meta={"shop": f"s{(start + i) % 100}", "colour": "red" if (start + i) % 2 else "blue"} if meta else None)
        for i, v in enumerate(vecs)
    ]
    return cat.write(rows, [])


@pytest.fixture()
def cat(tmp_path: Path):
    c = Catalogue(tmp_path / "index")
    add_rows(c, clustered(N, seed=1), 0)
    yield c
    c.close()


def test_an_ivf_index_is_tuned_to_the_recall_target_and_agrees_with_exact_search(cat: Catalogue) -> None:
    vi = vectors.VectorIndex(cat)
    assert vi.sync(DIM, force=True, requested=KIND) == []
    state = cat.get_setting(vectors.GENERATION_KEY)
    assert state["type"] == KIND and state["nlist"] == 32 and state["code_size"] == DIM
    assert state["recall"] >= 0.95 and 1 <= state["nprobe"] <= 32 and state["trained"] == N
    loaded = vectors.load(cat, DIM, mmap=True)
    assert not loaded.rebuilt and ivf_of(loaded.index).nprobe == state["nprobe"]
    _, near = cat.vectors_by_id(range(1, N, N // 50))  # queries like the collection's photos
    queries = near + 0.1 * np.random.default_rng(7).normal(size=near.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, found = vectors.search(loaded, queries, 10)
    exact_scores, exact_ids = exact_search(cat, queries, 10)
    shared = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact_ids)])
    assert shared >= 0.9, shared
    by_id = dict(zip(*cat.vectors_by_id(found[0])))  # the scores are exact cosines (re-ranked from SQLite)
    np.testing.assert_allclose(scores[0], [by_id[i] @ queries[0] for i in found[0]], rtol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    assert vi.measure_recall(DIM) >= 0.9


def test_updates_go_in_place_without_training_again(cat: Catalogue) -> None:
    vi = vectors.VectorIndex(cat)
    vi.sync(DIM, force=True, requested=KIND)
    before = vectors.load(cat, DIM)
    centroids = ivf_of(before.index).quantizer.reconstruct_n(0, 32)
    base = cat.version()
    new_ids = add_rows(cat, clustered(200, seed=2), N)
    edited = [5, 6]
    cat.write([ImageRow(f"/photos/p{i - 1}.jpg", "/photos", 2, 2, f"e{i}", vector_bytes(clustered(1, seed=100 + i)[0]), id=i)
               for i in edited], [])
    gone = [10, 11, 12]
    cat.remove([f"/photos/p{i - 1}.jpg" for i in gone])
    notes = vi.sync(DIM, force=True, changes=vectors.Changes(base, tuple(new_ids + edited), tuple(gone)))
    assert notes == []
    after = vectors.load(cat, DIM)
    assert not after.rebuilt and after.generation == before.generation + 1
    np.testing.assert_array_equal(ivf_of(after.index).quantizer.reconstruct_n(0, 32), centroids)  # not trained again
    assert sorted(ids_of(after.index)) == cat.all_ids().tolist()
    for i in edited + new_ids[:3]:  # an edit and the new rows are found at rank 1 by their own vectors
        _, found = vectors.search(after, cat.vector_of(i)[None], 1)
        assert found[0, 0] == i


def test_a_collection_four_times_larger_is_trained_again_and_the_run_says_so(cat: Catalogue) -> None:
    vi = vectors.VectorIndex(cat)
    vi.sync(DIM, force=True, requested="IVF8,SQ8")
    base = cat.version()
    new_ids = add_rows(cat, clustered(4 * N, seed=3), N)
    notes = vi.sync(DIM, force=True, changes=vectors.Changes(base, tuple(new_ids), ()))
    assert len(notes) == 1 and "trained again" in notes[0] and str(5 * N) in notes[0]
    assert cat.get_setting(vectors.GENERATION_KEY)["trained"] == 5 * N


def test_readers_map_the_file_and_see_rows_committed_since(cat: Catalogue) -> None:
    vectors.VectorIndex(cat).sync(DIM, force=True, requested=KIND)
    reader = vectors.VectorIndex(cat)
    loaded = reader.refresh(DIM)
    assert not loaded.rebuilt and loaded.count == N
    [new] = add_rows(cat, clustered(1, seed=4), N)
    loaded = reader.refresh(DIM)
    assert loaded.count == N + 1 and loaded.delta is not None
    _, found = vectors.search(loaded, cat.vector_of(new)[None], 1)
    assert found[0, 0] == new


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flat-file"])
def test_a_damaged_ivf_file_is_rebuilt(cat: Catalogue, damage: str) -> None:
    vectors.VectorIndex(cat).sync(DIM, force=True, requested=KIND)
    state = cat.get_setting(vectors.GENERATION_KEY)
    path = vectors.vectors_file(cat.dir, state["generation"])
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(len(data)))
    else:  # a flat index of the same rows where an IVF one is recorded
        flat = vectors.build(cat, DIM, requested="flat")
        import faiss

        faiss.write_index(flat, str(path))
        cat.set_settings({vectors.GENERATION_KEY: {**state, "bytes": path.stat().st_size}})
    loaded = vectors.load(cat, DIM, mmap=True)
    assert loaded.rebuilt and loaded.info["type"] == KIND
    assert sorted(ids_of(loaded.index)) == cat.all_ids().tolist()


def test_a_filter_is_an_index_lookup_and_returns_k_matching_rows(cat: Catalogue) -> None:
    from dinosearch.search import search

    vectors.VectorIndex(cat).sync(DIM, force=True, requested=KIND)
    loaded = vectors.load(cat, DIM, mmap=True)
    shop = cat.ids_matching({"shop": "s7"})
    assert len(shop) == N // 100 and all(i % 100 == 8 for i in shop)  # ids start at 1, paths at p0
    both = cat.ids_matching({"shop": "s7", "colour": "red"})
    assert set(both) == {i for i in shop if (i - 1) % 2}
    hits = search(cat, loaded, clustered(1, seed=9)[0], k=10, where={"shop": "s7"})
    assert len(hits) == 10 and {h.id for h in hits} <= set(shop.tolist())
    assert [h.id for h in hits] == [h.id for h in search(cat, loaded, clustered(1, seed=9)[0], k=10, where={"shop": "s7"}, exact=True)]
    cat.set_metadata({"/photos/p7.jpg": {"shop": "elsewhere"}})  # the key/value rows follow the JSON
    assert 8 not in cat.ids_matching({"shop": "s7"}).tolist() and cat.ids_matching({"shop": "elsewhere"}).tolist() == [8]
    cat.remove(["/photos/p107.jpg"])
    assert 108 not in cat.ids_matching({"shop": "s7"}).tolist()


def test_stats_show_the_index_type_and_its_recall(tmp_path: Path, tiny_model: str) -> None:
    from .conftest import run_cli
    from .images import jpeg_bytes, photo

    root, index_dir = tmp_path / "photos", tmp_path / "index"
    root.mkdir()
    for i in range(12):
        (root / f"p{i}.jpg").write_bytes(jpeg_bytes(photo(64, 48, seed=i)))
    bad = run_cli("index", str(root), "--index", str(index_dir), "--model", tiny_model, "--index-type", "IVF4,Bogus")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "--index-type" in bad.stderr
    run_cli("index", str(root), "--index", str(index_dir), "--model", tiny_model, "--index-type", "IVF2,SQ8", check=True)
    stats = json.loads(run_cli("stats", "--index", str(index_dir), "--json", check=True).stdout)
    assert (stats["index_type"], stats["nlist"]) == ("IVF2,SQ8", 2) and stats["recall"] >= 0.95 and stats["nprobe"] >= 1
    again = json.loads(run_cli("stats", "--index", str(index_dir), "--json", "--recall", check=True).stdout)
    assert again["recall"] >= 0.9 and again["images"] == 12
    hits = json.loads(run_cli("query", str(root / "p3.jpg"), "--index", str(index_dir), "--json", "--exact", "-k", "3", check=True).stdout)
    assert len(hits["results"]) == 3
    (root / "p0.jpg").unlink()
    run_cli("index", str(root), "--index", str(index_dir), "--model", tiny_model, check=True)  # the recorded type is kept
    stats = json.loads(run_cli("stats", "--index", str(index_dir), "--json", check=True).stdout)
    assert stats["index_type"] == "IVF2,SQ8" and stats["images"] == 11 == stats["vectors"]


def test_a_big_collection_plans_with_the_walk_in_a_process_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above plan.WALK_APART_FROM indexed images the walk runs in a spawned process beside the catalogue
    read: the plan is the same as the one walked in this process (unchanged, changed, new, gone)."""
    from dinosearch import plan as planning

    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    files = [root / "a.jpg", root / "sub" / "b.png", root / "sub" / "c.jpg", root / "d.jpg"]
    for i, f in enumerate(files):
        f.write_bytes(b"x" * (10 + i))
    cat = Catalogue(tmp_path / "ix")
    vec = vector_bytes(np.ones(DIM, np.float32) / np.sqrt(DIM))
    st = [f.stat() for f in files]
    cat.write([
        ImageRow(str(files[0]), str(root), st[0].st_size, st[0].st_mtime_ns, "h0", vec),  # unchanged
        ImageRow(str(files[1]), str(root), st[1].st_size + 1, st[1].st_mtime_ns, "h1", vec),  # changed
        ImageRow(str(root / "gone.jpg"), str(root), 5, 5, "h2", vec),  # deleted from disk
    ], [])  # c.jpg and d.jpg are new

    def summary(p: planning.Plan) -> tuple:
        return (p.unchanged, sorted(f.path for f in p.todo), sorted(p.gone), sorted(p.known), p.warnings)

    monkeypatch.setattr(planning, "WALK_APART_FROM", 10**9)
    here = summary(planning.plan(cat, [str(root)]))
    monkeypatch.setattr(planning, "WALK_APART_FROM", 0)
    apart = summary(planning.plan(cat, [str(root)]))
    assert apart == here
    assert here[:3] == (1, sorted(str(f) for f in files[1:]), [str(root / "gone.jpg")])
    cat.close()


def test_the_reranked_candidates_are_tuned_with_nprobe_when_codes_are_coarse(tmp_path: Path) -> None:
    """8-byte PQ codes of 32-d vectors cannot order 600 close neighbours per cluster: k + 32 candidates
    miss recall@10 0.95 at small nprobe, so tuning re-ranks more; the generation records how many and
    every later search (a reader's too) uses them."""
    from dinosearch.store.layout import GENERATION_KEY
    from dinosearch.store.recall import RERANKS, recall_at, sample_queries, without_self

    cat = Catalogue(tmp_path / "ix")
    add_rows(cat, clustered(6000, seed=1, clusters=10), 0)
    vectors.VectorIndex(cat).sync(DIM, force=True, requested="IVF16,PQ8")
    state = cat.get_setting(GENERATION_KEY)
    assert state["rerank"] > RERANKS[0] and state["recall"] >= 0.95
    loaded = vectors.load(cat, DIM, mmap=True)
    assert not loaded.rebuilt and loaded.info["rerank"] == state["rerank"]
    ids, queries = sample_queries(cat, n=200, seed=7)
    _, truth = exact_search(cat, queries, 10, exclude=ids)

    def recall(index: vectors.LoadedVectors) -> float:
        return recall_at(without_self(vectors.search(index, queries, 11)[1], ids, 10), truth)

    few = vectors.LoadedVectors(loaded.index, loaded.generation, False, info={**loaded.info, "rerank": RERANKS[0]},
                                fetch=cat.vectors_by_id)
    assert recall(loaded) >= 0.9 and recall(loaded) > recall(few) + 0.03
    cat.close()
