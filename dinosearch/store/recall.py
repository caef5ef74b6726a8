"""Exact search over the float32 vectors in SQLite, and the recall of an approximate index measured
against it on the collection's own vectors.

The exact search streams SQLite chunk by chunk (memory stays at one chunk, whatever the collection's
size): it is the ground truth when nprobe is tuned, and what `query --exact` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from .catalogue import Catalogue
from .kinds import faiss_module

RECALL_K = 10  # recall@10: the share of the exact top 10 that the index returns in its top 10
TARGET = 0.95  # the recall@10 nprobe is tuned to reach
SAMPLE = 500  # query vectors drawn from the collection to measure it
NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

Search = Callable[[np.ndarray, int, int], np.ndarray]  # (queries (m, d), k, nprobe) -> ids (m, k)
Tuning = Callable[[np.ndarray, int, int, int], np.ndarray]  # (queries, k, nprobe, candidates beyond k) -> ids (m, k)
# Candidates beyond k that a search re-ranks from the float32 vectors, tried at each nprobe in turn. 32
# was enough at 1M rows; at 10M, 8-bit codes could not order the collection's close neighbours and k + 32
# held 90 % of the true top 10 at any nprobe, where k + 190 held all of them at nprobe 16.
RERANKS = (32, 96, 288)


def exact_search(
    catalogue: Catalogue,
    queries: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(m, dim) float32 queries -> exact (scores (m, k), ids (m, k)) over every vector in SQLite; id -1
    where fewer than k exist. `allowed` ((n,) int64) restricts to those ids; `exclude` ((m,) int64) drops
    one id per query (the query's own row)."""
    faiss = faiss_module()
    q = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    for ids, vecs in catalogue.iter_vectors():
        if allowed is not None:
            keep = np.isin(ids, allowed)
            ids, vecs = ids[keep], vecs[keep]
        if len(ids) == 0:
            continue
        scores = q @ vecs.T  # (m, chunk)
        if exclude is not None:
            scores[exclude[:, None] == ids[None, :]] = -np.inf
        kk = min(k, len(ids))
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        d = np.take_along_axis(scores, top, axis=1)
        i = np.where(np.isfinite(d), ids[top], -1)
        heap.add_result(np.ascontiguousarray(d, dtype=np.float32), np.ascontiguousarray(i, dtype=np.int64))
    heap.finalize()
    return heap.D, heap.I


def sample_queries(catalogue: Catalogue, n: int = SAMPLE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids (m,), vectors (m, dim)) of up to `n` rows drawn at random from the collection."""
    ids = catalogue.all_ids()
    picked = np.sort(np.random.default_rng(seed).choice(ids, size=min(n, len(ids)), replace=False)) if len(ids) else ids
    return catalogue.vectors_by_id(picked)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = RECALL_K) -> float:
    """Mean share of each query's exact top k (truth (m, >=k), -1 = none) that `found` (m, >=k) holds."""
    hits = total = 0
    for f, t in zip(found[:, :k], truth[:, :k]):
        want = set(t[t >= 0].tolist())
        hits += len(want & set(f.tolist()))
        total += len(want)
    return hits / total if total else 1.0


def without_self(found: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Results for queries that are collection rows, each row's own id dropped: (m, k)."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for row, (f, own) in enumerate(zip(found, ids)):
        rest = f[f != own][:k]
        out[row, : len(rest)] = rest
    return out


def tune(search: Tuning, query_ids: np.ndarray, queries: np.ndarray, truth: np.ndarray, nlist: int,
         target: float = TARGET) -> tuple[int, int, float]:
    """(nprobe, re-ranked candidates beyond k, recall@10): the smallest nprobe, and at it the fewest
    candidates of RERANKS, whose recall@10 reaches `target`; else every list, the most candidates, and
    the recall they reach."""
    tried: Iterable[int] = [p for p in NPROBES if p < nlist] + [nlist]
    recall = 0.0
    for nprobe in tried:
        for extra in RERANKS:
            found = without_self(search(queries, RECALL_K + 1, nprobe, extra), query_ids, RECALL_K)
            recall = recall_at(found, truth)
            if recall >= target:
                return nprobe, extra, recall
    return nlist, RERANKS[-1], recall


def measure(catalogue: Catalogue, search: Search, nprobe: int, *, seed: int = 1) -> float:
    """recall@10 of `search` at `nprobe`, on a fresh sample of the collection's own vectors."""
    ids, queries = sample_queries(catalogue, seed=seed)
    if len(ids) == 0:
        return 1.0
    _, truth = exact_search(catalogue, queries, RECALL_K, exclude=ids)
    return recall_at(without_self(search(queries, RECALL_K + 1, nprobe), ids, RECALL_K), truth)
