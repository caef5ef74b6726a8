"""Trimming a ranked list: a cut-off relative to the best score, and folding near-identical hits.

Pure functions over hits and their vectors, so they are tested on constructed scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from .records import Hit


def within(hits: Sequence[Hit], distance: float) -> list[Hit]:
    """The hits whose score is at least the best score minus `distance` (cosine units, >= 0).

    Hits are in rank order (best first); ranks are kept as they are (no hit before a kept one is dropped).
    """
    if not hits:
        return []
    floor = hits[0].score - distance
    return [h for h in hits if h.score >= floor]


def collapse(hits: Sequence[Hit], vector_of: Callable[[int], np.ndarray | None], threshold: float) -> list[Hit]:
    """Fold each hit into the first earlier kept hit within cosine distance `threshold` of it
    (1 - cosine <= threshold); the kept hits are ranked 1..n again and list what they absorbed in
    `folded` (ids, best first).

    `vector_of(id)` gives a hit's (dim,) unit vector; a hit without one is kept as it is. Only kept
    hits absorb others, so a chain of small steps does not fold two very different images together.
    """
    kept: list[tuple[Hit, np.ndarray | None, list[int]]] = []
    for hit in hits:
        v = vector_of(hit.id)
        home = None
        if v is not None:
            home = next(
                (group for group in kept if group[1] is not None and 1.0 - float(np.dot(group[1], v)) <= threshold),
                None,
            )
        if home is None:
            kept.append((hit, v, []))
        else:
            home[2].append(hit.id)
    return [replace(hit, rank=i, folded=tuple(folded)) for i, (hit, _, folded) in enumerate(kept, start=1)]


def refined(
    ranked: Callable[[int], list[Hit]],
    *,
    k: int,
    within_distance: float | None = None,
    collapse_threshold: float | None = None,
    vector_of: Callable[[int], np.ndarray | None] | None = None,
) -> list[Hit]:
    """The top k of `ranked(n)` (the best n hits) after `within` and `collapse`.

    Collapsing folds hits away, so more are asked for until k groups are found, the ranking runs
    out, or the `within` cut-off is reached. Raises QueryError for a negative distance or threshold.
    """
    from .errors import QueryError

    if within_distance is not None and not within_distance >= 0:
        raise QueryError(f"within: a score distance >= 0 is needed, not {within_distance}")
    if collapse_threshold is not None and not 0 <= collapse_threshold <= 2:
        raise QueryError(f"collapse: a cosine distance between 0 and 2 is needed, not {collapse_threshold}")
    want = k
    while True:
        hits = ranked(want)
        done = len(hits) < want or want >= 64 * k  # the ranking ran out, or enough was looked at
        if within_distance is not None:
            kept = within(hits, within_distance)
            done = done or len(kept) < len(hits)  # lower scores only follow
            hits = kept
        if collapse_threshold is None or vector_of is None:
            return hits[:k]
        groups = collapse(hits, vector_of, collapse_threshold)
        if len(groups) >= k or done:
            return groups[:k]
        want *= 4
