"""Similar pairs of a whole collection: a k-nearest-neighbour search of every vector through FAISS.

Never an N x N matrix: queries go in chunks, each keeps its k best neighbours above the threshold,
so memory is the vectors once plus one chunk of results. Up to EXACT_MAX vectors the search is exact
(flat inner product); above, an IVF index trained on a sample of the collection scans NPROBE of its
~4*sqrt(N) lists per query, so the work grows as N^1.5 rather than N^2. Copies are close to each
other, so they share a list (or a neighbouring one) and are found; what an IVF pass may miss is pairs
near the threshold (the duplicates bench reports the share of planted copies it finds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

Chunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # () -> (ids (n,) int64, vectors (n, dim) float32), ...

K = 32  # neighbours per query in the first pass
K_MAX = 128  # a query whose k-th neighbour is still above the threshold is searched again, up to this
EXACT_MAX = 20_000
NPROBE = 16
TRAIN_PER_LIST = 16
QUERY_CHUNK = 4096


def _faiss() -> Any:
    import faiss

    return faiss


def build_search_index(chunks: Chunks, *, count: int, dim: int, exact_max: int = EXACT_MAX, seed: int = 0) -> Any:
    """A FAISS index (ids = the chunks' ids, inner product) over every vector `chunks()` yields.

    Flat up to `exact_max` vectors; IVF-Flat above, trained on an evenly spread sample.
    """
    faiss = _faiss()
    if count <= exact_max:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
        nlist = int(4 * np.sqrt(count))
        # Above ~1k lists, finding a query's nearest lists by brute force would cost more than scanning them.
        quantizer = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT) if nlist >= 1024 else faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # Coarse centroids are enough: copies sit so close together that they share a list or the next one.
        index.cp.seed, index.cp.niter, index.cp.min_points_per_centroid = seed, 8, TRAIN_PER_LIST
        index.train(_sample(chunks, count=count, want=min(count, TRAIN_PER_LIST * nlist)))
        index.nprobe = NPROBE
    for ids, vecs in chunks():
        index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return index


def _sample(chunks: Chunks, *, count: int, want: int) -> np.ndarray:
    """Every (count / want)-th vector: spread over the whole collection, not its first rows."""
    step = max(1, count // want)
    parts, seen = [], 0
    for _, vecs in chunks():
        first = (-seen) % step
        parts.append(np.asarray(vecs[first::step], dtype=np.float32))
        seen += len(vecs)
    return np.ascontiguousarray(np.concatenate(parts)[:want])


def similar_pairs(
    index: Any, chunks: Chunks, *, threshold: float, k: int = K, k_max: int = K_MAX, query_chunk: int = QUERY_CHUNK
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (a < b) whose cosine is >= threshold among each vector's nearest neighbours.

    Returns (a (m,) int64, b (m,) int64, scores (m,) float32), one row per pair. A vector with more
    than `k_max` neighbours above the threshold keeps its `k_max` nearest.
    """
    found: list[np.ndarray] = []
    for ids, vecs in chunks():
        for start in range(0, len(ids), query_chunk):
            q_ids = np.asarray(ids[start : start + query_chunk], dtype=np.int64)
            q = np.ascontiguousarray(vecs[start : start + query_chunk], dtype=np.float32)
            found.extend(_pairs_of(index, q_ids, q, threshold=threshold, k=k, k_max=k_max))
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.float32)
    rows = np.concatenate(found)
    # Each pair is usually found from both ends: keep one row per (a, b).
    _, first = np.unique(rows[:, :2].astype(np.int64), axis=0, return_index=True)
    rows = rows[np.sort(first)]
    return rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64), rows[:, 2].astype(np.float32)


def _pairs_of(index: Any, q_ids: np.ndarray, q: np.ndarray, *, threshold: float, k: int, k_max: int) -> list[np.ndarray]:
    """Rows (a, b, score) as float64 (ids are exact below 2**53) for one chunk of queries."""
    out = []
    todo = np.arange(len(q_ids))
    kk = min(k, max(1, int(index.ntotal)))
    while len(todo):
        scores, nbrs = index.search(q[todo], kk)
        keep = (nbrs >= 0) & (scores >= threshold) & (nbrs != q_ids[todo, None])
        rows, cols = np.nonzero(keep)
        a, b = q_ids[todo][rows], nbrs[rows, cols]
        out.append(np.stack([np.minimum(a, b), np.maximum(a, b), scores[rows, cols]], axis=1).astype(np.float64))
        full = scores[:, -1] >= threshold  # its k-th neighbour still counts: there may be more
        if kk >= min(k_max, int(index.ntotal)) or not full.any():
            break
        todo, kk = todo[full], min(kk * 4, k_max, int(index.ntotal))
    return out
