"""Query parameters shared by search and similar: more ids to look like (`like`), ids to look unlike
(`minus`), a region (`crop`), the relative cut-off (`within`) and collapsing (`collapse`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import HTTPException

from ..api import Term
from ..errors import ImageError, NoLabelsError, QueryError, UnknownImageError
from ..label import Prediction as LabelPrediction
from ..records import Hit
from .engine import QueryEngine

MAX_ID = 2**63 - 1
MAX_QUERY_IDS = 16  # `like` and `minus` ids in one query

@dataclass(frozen=True)
class _Refine:
    like: tuple[int, ...]
    minus: tuple[int, ...]
    within: float | None
    collapse: float | None


def parse_refine(fields: dict[str, list[str]]) -> _Refine:
    ids: dict[str, tuple[int, ...]] = {}
    for name in ("like", "minus"):
        values = fields.get(name, [])
        if len(values) > MAX_QUERY_IDS:
            raise HTTPException(422, f"{name}: at most {MAX_QUERY_IDS} ids")
        ids[name] = tuple(_field_id(name, v) for v in values)
    numbers: dict[str, float | None] = {}
    for name, top in (("within", 2.0), ("collapse", 2.0)):
        values = fields.get(name, [])
        if len(values) > 1:
            raise HTTPException(422, f"{name}: give it once")
        try:
            value = float(values[0]) if values else None
        except ValueError:
            value = -1.0
        if value is not None and not 0 <= value <= top:
            raise HTTPException(422, f"{name}: a number between 0 and {top:g}")
        numbers[name] = value
    return _Refine(ids["like"], ids["minus"], numbers["within"], numbers["collapse"])


def _field_id(name: str, text: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not 1 <= int(text) <= MAX_ID:
        raise HTTPException(422, f"{name}: ids are whole numbers from 1")
    return int(text)


def parse_crop_param(text: str | None) -> Any:
    if text is None:
        return None
    from ..region import parse_crop

    try:
        return parse_crop(text)
    except QueryError as exc:
        raise HTTPException(422, str(exc)) from None
    except ImageError:  # an indexed file changed or went away since indexing; its message names a host path
        raise HTTPException(404, "an image of this query can no longer be read; run `dinosearch index` again") from None


async def run_query(
    engine: QueryEngine, terms: list[Term], refine: _Refine, *, k: int, where: dict[str, str],
    vote: np.ndarray | int | None = None,
) -> tuple[list[Hit], LabelPrediction | None] | None:
    """Run a combined query and the label vote in one trip to the index thread (each trip costs the
    server's one core more than a search's SQLite reads); unknown ids and impossible queries are 4xx.

    `vote`: what the k-NN label vote is for, a (dim,) vector or an indexed id whose stored vector votes
    (and which does not vote for itself); None: no vote. Returns (hits, the vote or None when the index
    has no labels), or None when `vote` is an id that is not indexed.
    """
    index = engine.index

    def read() -> tuple[list[Hit], LabelPrediction | None] | None:
        vector, exclude = (vote, set()) if not isinstance(vote, int) else (index.catalogue.vector_of(vote), {vote})
        if isinstance(vote, int) and vector is None:
            return None
        hits = index.search(*terms, minus=[Term(id=i) for i in refine.minus], k=k, where=where,
                            within=refine.within, collapse=refine.collapse)
        if vector is None:
            return hits, None
        try:
            return hits, index.label_vector(vector, exclude_ids=exclude)
        except NoLabelsError:
            return hits, None

    try:
        return await engine.read(read)
    except UnknownImageError as exc:
        raise HTTPException(404 if len(terms) == 1 and not refine.minus else 422, str(exc)) from None
    except QueryError as exc:
        raise HTTPException(422, str(exc)) from None
    except ImageError:  # an indexed file changed or went away since indexing; its message names a host path
        raise HTTPException(404, "an image of this query can no longer be read; run `dinosearch index` again") from None
