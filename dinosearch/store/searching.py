"""Searching a loaded vector index: top k over the generation's index and the rows added since, with an
exact re-rank of an IVF index's candidates from SQLite's float32 vectors, and filters as id selectors."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .kinds import faiss_module as _faiss
from .kinds import is_flat, ivf_of

RERANK_EXTRA = 32  # an IVF search takes k + this many candidates (at least 2k), re-ranked exactly, unless tuned otherwise


@dataclass
class LoadedVectors:
    index: Any  # the generation's index: IDMap2,Flat, or an IVF index (mapped read-only by readers)
    generation: int
    rebuilt: bool  # True: the file was missing or did not match SQLite and was rebuilt in memory
    info: dict[str, Any] = field(default_factory=dict)  # what the generation records: type, nprobe, recall ...
    delta: Any = None  # IDMap2,Flat of rows committed since the generation, beside an IVF index
    fetch: Callable[[Any], tuple[np.ndarray, np.ndarray]] | None = None  # exact vectors by id, for the re-rank

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal) + (int(self.delta.ntotal) if self.delta is not None else 0)

    @property
    def count(self) -> int:
        return self.ntotal

    @property
    def d(self) -> int:
        return int(self.index.d)


def search(index: Any, queries: np.ndarray, k: int, ids: np.ndarray | None = None, *,
           nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(m, dim) float32 queries -> (scores (m, k), ids (m, k)), best first; id -1 where fewer exist.

    `index` is a FAISS index or LoadedVectors (then rows added since its generation count too, and an
    IVF index's candidates are re-scored exactly from SQLite's float32 vectors, so scores are exact
    cosines). `ids`, when given, restricts the search to those ids (filters apply before top-k is cut).
    `nprobe` overrides the tuned one (more lists: higher recall, slower).
    """
    if not isinstance(index, LoadedVectors):
        return _search_one(index, queries, k, ids, nprobe)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    approximate = not is_flat(index.index)
    # Candidates re-ranked beyond k: as tuned with the generation's nprobe (recall.RERANKS), else RERANK_EXTRA.
    extra = int(index.info.get("rerank") or RERANK_EXTRA)
    want = max(2 * k, k + extra) if approximate else k
    scores, found = _search_one(index.index, q, want, ids, nprobe)
    if index.delta is not None and index.delta.ntotal:
        s2, i2 = _search_one(index.delta, q, want, ids, None)
        scores, found = np.hstack([scores, s2]), np.hstack([found, i2])
    if approximate and index.fetch is not None:
        scores = _rescore(index.fetch, q, found)
    return _top(scores, found, k)


def _search_one(index: Any, q: np.ndarray, k: int, ids: np.ndarray | None, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
    faiss = _faiss()
    total = int(index.ntotal)
    k = max(1, min(k, total)) if total else 1
    q = np.ascontiguousarray(q, dtype=np.float32)
    sel = _selector(ids) if ids is not None else None
    ivf = ivf_of(index)
    if ivf is None:
        return index.search(q, k, params=faiss.SearchParameters(sel=sel)) if sel is not None else index.search(q, k)
    probe = nprobe or ivf.nprobe
    if ids is not None and 0 < len(ids) < total:
        # A filter keeps a share of each list: probe proportionally more lists to find k that match.
        probe = math.ceil(probe * total / len(ids))
    params = faiss.SearchParametersIVF(nprobe=int(min(ivf.nlist, max(1, probe))))
    if sel is not None:
        params.sel = sel
    return index.search(q, k, params=params)


_SELECTORS_LOCK = threading.Lock()
_SELECTORS: "OrderedDict[int, tuple[np.ndarray, Any]]" = OrderedDict()  # id(ids) -> (ids, selector), newest last


def _selector(ids: np.ndarray) -> Any:
    """A FAISS id selector for `ids`, reused while the same array is asked for again: the catalogue keeps
    its labelled ids as one array until the next commit, and a selector over 1M ids takes ~90 ms to build."""
    key = id(ids)
    with _SELECTORS_LOCK:
        hit = _SELECTORS.get(key)
        if hit is not None and hit[0] is ids:
            return hit[1]
    sel = _faiss().IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
    with _SELECTORS_LOCK:
        _SELECTORS[key] = (ids, sel)  # the array is kept with it, so its id is not reused meanwhile
        while len(_SELECTORS) > 4:
            _SELECTORS.popitem(last=False)
    return sel


def _rescore(fetch: Callable[[Any], tuple[np.ndarray, np.ndarray]], q: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Exact scores (m, c) of the candidates from the float32 vectors; -inf for rows gone from SQLite."""
    wanted = np.unique(found[found >= 0])
    have, vecs = fetch(wanted)
    scores = np.full(found.shape, -np.inf, dtype=np.float32)
    if len(have) == 0:
        return scores
    pos = np.searchsorted(have, found)
    pos = np.clip(pos, 0, len(have) - 1)
    present = (found >= 0) & (have[pos] == found)
    exact = np.einsum("mcd,md->mc", vecs[pos], q)
    scores[present] = exact[present]
    return scores


def _top(scores: np.ndarray, found: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row (duplicates of an id, found in both the index and the delta, once)."""
    scores = np.where(found >= 0, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")
    s, i = np.take_along_axis(scores, order, axis=1), np.take_along_axis(found, order, axis=1)
    out_s = np.full((len(s), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(s), k), -1, dtype=np.int64)
    for row in range(len(s)):
        keep = np.isfinite(s[row]) & (i[row] >= 0)
        _, first = np.unique(i[row][keep], return_index=True)
        take = np.sort(first)[:k]
        out_s[row, : len(take)], out_i[row, : len(take)] = s[row][keep][take], i[row][keep][take]
    n = max(1, int((out_i >= 0).sum(axis=1).max()) if len(out_i) else 1)
    return out_s[:, :n], out_i[:, :n]
