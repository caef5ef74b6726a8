"""Evaluate: measured retrieval quality on the user's own labelled index, leave-one-out.

Every labelled image is a query in turn (or a sample of them); the other images with the same value
are the relevant ones, the query itself is left out. Figures, as metric-learning papers report them
(Musgrave et al. 2020, "A Metric Learning Reality Check"):

- Recall@K: the share of queries with at least one relevant image among their K nearest.
- mAP@R: with R the number of images relevant to a query, the mean over queries of
  (1/R) * sum over ranks i <= R of precision@i where rank i is relevant.
- k-NN accuracy: the share of queries whose value the vote of dinosearch.label (its k nearest,
  weighted by exp(cosine / 0.07)) predicts.

A query whose value no other image has can be neither found nor predicted: it is skipped and counted.
Near-duplicates: each copy (a derived image: resized, cropped, re-encoded) is a query whose one
relevant image is its original; Recall@K says how often the original is among its K nearest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .label import DEFAULT_K, TEMPERATURE, knn_predict

RECALL_AT = (1, 5, 10)
COPY_SEPARATOR = "~"  # copies/bag-red~crop.jpg is a copy of the indexed bag-red.<any extension>


@dataclass(frozen=True)
class Scores:
    queries: int  # queries measured
    recall: dict[int, float]  # K -> Recall@K
    map_at_r: float
    knn_accuracy: float | None = None  # None where there are no labels to predict (near-duplicates)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"queries": self.queries}
        d.update({f"recall@{k}": round(v, 6) for k, v in self.recall.items()})
        d["map@r"] = round(self.map_at_r, 6)
        if self.knn_accuracy is not None:
            d["knn_accuracy"] = round(self.knn_accuracy, 6)
        return d


@dataclass(frozen=True)
class Evaluation:
    by: str
    images: int  # labelled images
    values: int  # distinct values among them
    skipped: int  # sampled queries whose value no other image has
    k: int  # neighbours in the k-NN vote
    retrieval: Scores
    duplicates: Scores | None = None
    duplicates_skipped: tuple[str, ...] = ()  # copies whose original could not be named

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "by": self.by, "images": self.images, "values": self.values, "skipped": self.skipped, "k": self.k,
            "retrieval": self.retrieval.to_dict(),
        }
        if self.duplicates is not None:
            d["duplicates"] = {**self.duplicates.to_dict(), "skipped": list(self.duplicates_skipped)}
        return d


def leave_one_out(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    k: int = DEFAULT_K,
    sample: int | None = None,
    seed: int = 0,
    temperature: float = TEMPERATURE,
    max_cells: int = 1 << 25,
) -> tuple[Scores, int]:
    """Leave-one-out figures over (n, dim) unit float32 vectors and their n values.

    `sample`: at most this many queries, drawn without replacement (seeded: the same ones each run).
    Returns the scores and how many drawn queries were skipped (a value no other image has).
    Exact: every query is compared with all n vectors, `max_cells` similarities at a time.
    """
    names, codes = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    counts = np.bincount(codes, minlength=len(names))
    n = len(codes)
    drawn = np.arange(n)
    if sample is not None and sample < n:
        drawn = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    queries = drawn[counts[codes[drawn]] >= 2]
    found = {kk: 0 for kk in RECALL_AT}
    ap_sum = correct = 0.0
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    chunk = max(1, max_cells // max(n, 1))
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        sims = x[q] @ x.T
        sims[np.arange(len(q)), q] = -np.inf  # leave the query out
        for row, qi in zip(sims, q):
            r = int(counts[codes[qi]]) - 1
            depth = min(n - 1, max(r, k, max(RECALL_AT)))
            order = _top(row, depth)
            rel = codes[order] == codes[qi]
            for kk in RECALL_AT:
                found[kk] += bool(rel[:kk].any())
            hits = rel[:r]
            ap_sum += float((np.cumsum(hits) / np.arange(1, r + 1))[hits].sum() / r)
            top = order[:k]
            correct += knn_predict(row[top], [names[c] for c in codes[top]], temperature=temperature) == names[codes[qi]]
    m = max(len(queries), 1)
    scores = Scores(len(queries), {kk: v / m for kk, v in found.items()}, ap_sum / m, correct / m)
    return scores, int(len(drawn) - len(queries))


def _top(row: np.ndarray, depth: int) -> np.ndarray:
    """Indices of the `depth` highest scores, best first; equal scores in index order."""
    part = np.argpartition(-row, depth - 1)[:depth] if depth < len(row) else np.arange(len(row))
    return part[np.lexsort((part, -row[part]))]


def duplicate_scores(ranks: Sequence[int | None]) -> Scores:
    """Each copy's rank (1-based) of its original among its neighbours, None: not among them.

    One relevant image per query (R = 1), so mAP@R equals Recall@1 here.
    """
    m = max(len(ranks), 1)
    recall = {kk: sum(r is not None and r <= kk for r in ranks) / m for kk in RECALL_AT}
    return Scores(len(ranks), recall, recall[1])


def original_stem(copy_path: str) -> str:
    """`bag-red~crop.jpg` -> `bag-red`: the file stem of the original a copy was derived from."""
    stem = os.path.splitext(os.path.basename(copy_path))[0]
    return stem.split(COPY_SEPARATOR, 1)[0]


def originals_by_stem(paths: Sequence[str]) -> dict[str, str | None]:
    """Indexed paths by file stem; a stem two indexed files share maps to None (ambiguous)."""
    out: dict[str, str | None] = {}
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        out[stem] = None if stem in out else p
    return out


def copy_ranks(index: Any, copies: str | os.PathLike[str], *, depth: int = max(RECALL_AT)) -> tuple[list[int | None], list[str]]:
    """Each image under `copies` -> the rank of its original among its `depth` nearest in `index`
    (an api.Index; None: not among them), and the copies whose original could not be named."""
    from .errors import PathNotFoundError
    from .walk import walk

    root = os.path.abspath(os.fspath(copies))
    if not os.path.isdir(root):
        raise PathNotFoundError(f"{root} is not a folder; --copies takes a folder of derived images")
    originals = originals_by_stem(list(index.catalogue.known_under(["/"])))
    ranks: list[int | None] = []
    unnamed: list[str] = []
    for f in sorted(walk(root).files, key=lambda f: f.path):
        original = originals.get(original_stem(f.path))
        if original is None:
            unnamed.append(f.path)
            continue
        vector, same = index.vector_of(f.path)
        hits = index.search_vector(vector, k=depth, exclude_ids={same} if same is not None else set())
        ranks.append(next((h.rank for h in hits if h.path == original), None))
    return ranks, unnamed
