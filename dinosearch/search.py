"""Search: a query vector -> ranked hits, with exclusions, a score floor and metadata filters."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from .records import Hit
from .store import vectorindex
from .store.recall import exact_search
from .store.catalogue import Catalogue


def search(
    catalogue: Catalogue,
    index: Any,
    query: np.ndarray,
    *,
    k: int = 10,
    min_score: float | None = None,
    exclude_ids: Collection[int] = (),
    where: Mapping[str, str] | None = None,
    exact: bool = False,
    nprobe: int | None = None,
    all_frames: bool = False,
) -> list[Hit]:
    """Nearest images to `query` ((dim,) float32, unit length), best first, ranks 1..k.

    `index` is the loaded vector index (vectorindex.LoadedVectors, or a FAISS index). Filters (`where`)
    apply before the top k is cut, so k hits all match when k exist. Ids that the FAISS index holds but
    SQLite no longer does (a concurrent delete) are dropped, never shown. `exact`: every vector in SQLite
    is compared (no index); `nprobe`: lists an IVF index searches instead of its tuned number. A video
    counts once, by its best frame, unless `all_frames`.
    """
    if k <= 0 or index.ntotal == 0:
        return []
    allowed = None
    if where:
        allowed = catalogue.ids_matching(dict(where))
        if len(allowed) == 0:
            return []
    want = k + len(exclude_ids)
    while True:
        if exact:
            scores, ids = exact_search(catalogue, query.reshape(1, -1), want, allowed=allowed)
        else:
            scores, ids = vectorindex.search(index, query.reshape(1, -1), want, ids=allowed, nprobe=nprobe)
        pairs = [
            (int(i), float(s))
            for s, i in zip(scores[0], ids[0])
            if i >= 0 and int(i) not in exclude_ids and (min_score is None or s >= min_score)
        ]
        rows = catalogue.rows_by_id(i for i, _ in pairs)
        hits: list[Hit] = []
        videos_seen: set[str] = set()
        for i, s in pairs:
            r = rows.get(i)
            if r is None or len(hits) >= k:
                continue
            if r["timestamp"] is not None and not all_frames:
                if r["path"] in videos_seen:
                    continue  # a worse frame of a video already shown
                videos_seen.add(r["path"])
            hits.append(Hit(len(hits) + 1, i, min(1.0, s), r["path"], r["metadata"], timestamp=r["timestamp"]))
        below_floor = min_score is not None and len(scores[0]) > 0 and scores[0][-1] < min_score
        exhausted = want >= (index.ntotal if allowed is None else len(allowed)) or below_floor
        if len(hits) >= k or exhausted:
            return hits
        want *= 2  # rows deleted since the vectors were loaded took places: look further
