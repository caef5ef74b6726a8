"""Building a vector index from SQLite, and updating one in place.

A flat index is filled from SQLite. An IVF index is first trained on a sample of the collection's own
vectors, filled, then its nprobe is tuned on other rows of the collection against exact search (the
ground truth streamed from SQLite) until recall@10 reaches recall.TARGET; nprobe and the measured
recall are recorded with the generation. An IVF index is updated in place by id (remove, then add the
changed rows) until the collection has grown or shrunk RETRAIN_FACTOR-fold since it was trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DinosearchError
from . import recall
from .catalogue import Catalogue
from .kinds import AUTO, choose, describe, faiss_module, ivf_of
from .layout import FLAT

RETRAIN_FACTOR = 4  # grown or shrunk this much since training: train again (the lists no longer fit)
TRAIN_PER_LIST = 40  # training vectors per inverted list (k-means wants >= 39)
TRAIN_MIN = 20_000  # ... and at least this many (PQ codebooks need ~10k)

Searcher = Callable[[Any, np.ndarray, int, int, int], np.ndarray]  # (index, queries, k, nprobe, rerank) -> ids (m, k)


@dataclass(frozen=True)
class Built:
    index: Any
    info: dict[str, Any]  # recorded with the generation: type, nprobe, recall, trained, requested, budget


@dataclass(frozen=True)
class Changes:
    """What one run changed in the catalogue since `base_version` (rows written and rows deleted)."""

    base_version: int
    upserted: tuple[int, ...] = ()
    removed: tuple[int, ...] = field(default_factory=tuple)


def make_index(dim: int, kind: str = FLAT) -> Any:
    """An empty index of `kind` (a FAISS factory string) over `dim`-dimensional vectors, inner product."""
    faiss = faiss_module()
    return faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)


def _fill(index: Any, catalogue: Catalogue, dim: int) -> None:
    for ids, vecs in catalogue.iter_vectors():
        if vecs.shape[1] != dim:
            raise DinosearchError(f"stored vectors have {vecs.shape[1]} dimensions, the model {dim}")
        index.add_with_ids(np.ascontiguousarray(vecs), ids)


def build(catalogue: Catalogue, dim: int, search: Searcher, *, requested: str = AUTO,
          budget: int | None = None) -> Built:
    """A fresh index of every vector in SQLite, of the kind `requested` ("auto", "flat" or a factory
    string) for the collection's size and the memory `budget` (bytes). `search` runs the product's own
    search (re-rank included) when nprobe is tuned. Raises IndexTypeError, DinosearchError."""
    count = catalogue.count_images()
    kind = choose(requested, count, dim, budget)
    info: dict[str, Any] = {"requested": requested, "budget": budget, "trained": count}
    index = make_index(dim, kind)
    ivf = ivf_of(index)
    if ivf is not None and count < max(ivf.nlist, 1):
        kind, index, ivf = FLAT, make_index(dim, FLAT), None  # too few vectors to train: exact until there are
    if ivf is None:
        _fill(index, catalogue, dim)
        return Built(index, {**info, "type": FLAT, "nprobe": None, "recall": 1.0})
    _train(index, catalogue, ivf.nlist)
    _fill(index, catalogue, dim)
    nprobe, rerank, measured = tune(index, catalogue, search)
    ivf.nprobe = nprobe
    return Built(index, {**info, "type": kind, "nprobe": nprobe, "rerank": rerank, "recall": round(measured, 4)})


def _train(index: Any, catalogue: Catalogue, nlist: int) -> None:
    ids = catalogue.all_ids()
    n = min(len(ids), max(TRAIN_PER_LIST * nlist, TRAIN_MIN))
    picked = np.sort(np.random.default_rng(1234).choice(ids, size=n, replace=False))
    _, sample = catalogue.vectors_by_id(picked)
    index.train(np.ascontiguousarray(sample))


def tune(index: Any, catalogue: Catalogue, search: Searcher) -> tuple[int, int, float]:
    """(nprobe, re-ranked candidates beyond k, recall@10 at them): the smallest nprobe (and at it the
    fewest candidates) reaching recall.TARGET on held-out collection rows (recall.tune)."""
    ivf = ivf_of(index)
    query_ids, queries = recall.sample_queries(catalogue)
    if len(query_ids) == 0:
        return 1, recall.RERANKS[0], 1.0
    _, truth = recall.exact_search(catalogue, queries, recall.RECALL_K, exclude=query_ids)
    return recall.tune(lambda q, k, p, e: search(index, q, k, p, e), query_ids, queries, truth, ivf.nlist)


def retrain_reason(state: dict[str, Any], count: int) -> str | None:
    """Why an IVF index of `count` vectors, trained at state["trained"], must be trained again; else None."""
    trained = int(state.get("trained") or 0)
    if count > RETRAIN_FACTOR * max(trained, 1):
        return f"the collection grew from {trained} to {count} images since the vector index was trained"
    if count * RETRAIN_FACTOR < trained:
        return f"the collection shrank from {trained} to {count} images since the vector index was trained"
    return None


def apply(index: Any, catalogue: Catalogue, changes: Changes) -> None:
    """Update an IVF index in place: the removed and rewritten ids out, the rewritten rows' vectors in."""
    faiss = faiss_module()
    gone = np.unique(np.asarray(changes.removed + changes.upserted, dtype=np.int64))
    if len(gone):
        index.remove_ids(faiss.IDSelectorBatch(gone))
    ids, vecs = catalogue.vectors_by_id(changes.upserted)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vecs), ids)


def info_of(index: Any) -> dict[str, Any]:
    """nlist and code size of `index`, for `stats`."""
    return describe(index)
