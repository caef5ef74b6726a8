"""Labels by nearest neighbours: folder names as labels, and a similarity-weighted k-NN vote.

The vote is DINO's k-NN classifier (Caron et al. 2021, kept for DINOv2's k-NN evaluation): each of
the k nearest labelled images votes for its value with weight exp(cosine / T), T = 0.07, so a close
neighbour outweighs several distant ones. Confidence is a value's share of the total weight.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .records import Hit, display_path

DEFAULT_KEY = "label"
DEFAULT_K = 20  # DINOv2's k-NN evaluation uses k = 20
TEMPERATURE = 0.07


def folder_label(path: str) -> str:
    """The name of the folder holding `path`: `.../dogs/beagle/1.jpg` -> `beagle`."""
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


@dataclass(frozen=True)
class Vote:
    """One value's share of a vote."""

    value: str
    confidence: float  # share of the total weight, 0..1; the shares of a prediction sum to 1
    votes: int  # neighbours that voted for it

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "confidence": round(self.confidence, 6), "votes": self.votes}


@dataclass(frozen=True)
class Prediction:
    """The predicted values of metadata key `by` for one query, best first, and who voted."""

    query: str  # what the query was (a path as given, or "upload")
    by: str
    labels: tuple[Vote, ...]  # empty when no labelled neighbour was found
    neighbours: tuple[Hit, ...]  # the labelled neighbours that voted, nearest first

    @property
    def value(self) -> str | None:
        return self.labels[0].value if self.labels else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": display_path(self.query),
            "by": self.by,
            "label": self.value,
            "labels": [v.to_dict() for v in self.labels],
            "neighbours": [{**h.to_dict(), "value": value_of(h.metadata, self.by)} for h in self.neighbours],
        }


def value_of(metadata: dict[str, Any] | None, key: str) -> str | None:
    """A metadata value as text (compared as `--where` compares), None when absent or empty."""
    if not metadata or metadata.get(key) in (None, ""):
        return None
    return str(metadata[key])


def vote(neighbours: Iterable[tuple[float, str | None]], *, temperature: float = TEMPERATURE) -> tuple[Vote, ...]:
    """(cosine score, value or None) pairs -> the values by total weight exp(score / T), best first.

    Neighbours without a value are ignored. Ties (equal weight) go to the value whose nearest voter
    is closer, then to the value that sorts first, so the answer never depends on input order.
    """
    pairs = [(float(s), v) for s, v in neighbours if v is not None]
    if not pairs:
        return ()
    top = max(s for s, _ in pairs)
    weight: dict[str, float] = {}
    count: dict[str, int] = {}
    best: dict[str, float] = {}
    for s, v in pairs:
        # Relative to the best score: the same shares, without overflow for any temperature.
        weight[v] = weight.get(v, 0.0) + math.exp((s - top) / temperature)
        count[v] = count.get(v, 0) + 1
        best[v] = max(best.get(v, -math.inf), s)
    total = sum(weight.values())
    order = sorted(weight, key=lambda v: (-round(weight[v], 12), -best[v], v))
    return tuple(Vote(v, weight[v] / total, count[v]) for v in order)


def predict(hits: Sequence[Hit], *, by: str, query: str, temperature: float = TEMPERATURE) -> Prediction:
    """Neighbours (nearest first) -> a Prediction of `by`; unlabelled neighbours neither vote nor show."""
    labelled = tuple(h for h in hits if value_of(h.metadata, by) is not None)
    votes = vote(((h.score, value_of(h.metadata, by)) for h in labelled), temperature=temperature)
    return Prediction(query, by, votes, labelled)


def knn_predict(scores: np.ndarray, values: Sequence[str], *, temperature: float = TEMPERATURE) -> str | None:
    """The winning value of one vote given (k,) scores and the k neighbours' values (for `eval`)."""
    votes = vote(zip(scores.tolist(), values), temperature=temperature)
    return votes[0].value if votes else None


def nearest_labelled(
    catalogue: Any, index: Any, query: np.ndarray, *, ids: np.ndarray, k: int, exclude_ids: Collection[int] = ()
) -> list[Hit]:
    """The k images among `ids` nearest to `query` ((dim,) unit float32), nearest first, as Hits.
    `index`: the loaded vector index (vectorindex.LoadedVectors) or a FAISS index.

    Ids the FAISS index holds but SQLite no longer does (a concurrent delete) are dropped.
    """
    from .store import vectorindex

    scores, found = vectorindex.search(index, query.reshape(1, -1), k + len(exclude_ids), ids=ids)
    pairs = [(int(i), float(s)) for s, i in zip(scores[0], found[0]) if i >= 0 and int(i) not in exclude_ids]
    rows = catalogue.rows_by_id(i for i, _ in pairs)
    hits = [(i, s, rows[i]) for i, s in pairs if i in rows][:k]
    return [Hit(n, i, min(1.0, s), r["path"], r["metadata"]) for n, (i, s, r) in enumerate(hits, start=1)]
