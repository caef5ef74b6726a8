"""Duplicates on the web: `GET /api/duplicates` (the groups `dinosearch duplicates` finds, a page at a
time) and the `/duplicates` page that shows them.

Finding groups reads every vector once, so the groups of one (level, threshold, keep rule) are kept
until the index changes; paging through them costs nothing more. Names only, never host paths.
"""

from __future__ import annotations

import html
import os
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from .. import __version__
from ..duplicates import DuplicateGroup, DuplicateMember, threshold_for
from ..errors import DinosearchError
from ..records import display_path
from . import auth

CACHED = 4  # (level, threshold, rule) results kept per server


class DupImage(BaseModel):
    id: int
    name: str  # the file name, never its folder
    score: float  # cosine to the keeper
    width: int | None
    height: int | None
    size: int
    thumbnail_url: str
    image_url: str


class DupGroup(BaseModel):
    group: int  # 1-based, across all pages
    reason: str
    keeper: DupImage
    duplicates: list[DupImage]


class Duplicates(BaseModel):
    level: str
    threshold: float
    keep: str
    total_groups: int
    total_duplicates: int
    page: int
    per_page: int
    pages: int
    groups: list[DupGroup]


dup_api = APIRouter(prefix="/api", dependencies=[Depends(auth.require_key)], tags=["api"])
dup_page = APIRouter()
_PAGE = (Path(__file__).parent / "templates" / "duplicates.html").read_text(encoding="utf-8").replace(
    "{{version}}", html.escape(__version__)
)


@dup_api.get("/duplicates", response_model=Duplicates, summary="Groups of duplicates, as `dinosearch duplicates`")
async def duplicates(
    request: Request,
    level: Annotated[Literal["exact", "near", "similar"], Query(description="exact, near or similar")] = "near",
    threshold: Annotated[float | None, Query(gt=0, le=1, description="cosine to the keeper (near, similar)")] = None,
    keep: Annotated[Literal["largest", "oldest", "newest"], Query(description="the keeper rule")] = "largest",
    page: Annotated[int, Query(ge=1, le=1_000_000, description="1-based")] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Duplicates:
    try:
        cut = threshold_for(level, threshold)
    except DinosearchError as exc:
        raise HTTPException(422, f"threshold: {exc}") from None
    # Not through the engine's lock: grouping reads SQLite only, and searches must not wait for it.
    index = request.app.state.engine.index
    groups = await anyio.to_thread.run_sync(_groups, request.app.state, index, level, threshold, keep)
    start = (page - 1) * per_page
    return Duplicates(
        level=level, threshold=cut, keep=keep, total_groups=len(groups),
        total_duplicates=sum(len(g.duplicates) for g in groups), page=page, per_page=per_page,
        pages=max(1, -(-len(groups) // per_page)),
        groups=[_group(request, n, g) for n, g in enumerate(groups[start : start + per_page], start + 1)],
    )


@dup_page.get("/duplicates", response_class=HTMLResponse, include_in_schema=False)
async def duplicates_page() -> HTMLResponse:
    from .app import PAGE_CSP  # app.py includes this router: import at call time

    return HTMLResponse(_PAGE, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})


_cache_lock = threading.Lock()


def _groups(state: Any, index: Any, level: str, threshold: float | None, keep: str) -> list[DuplicateGroup]:
    """The groups of the index as it is now: cached per (level, threshold, rule, catalogue version)."""
    key = (level, threshold, keep, index.catalogue.version())
    with _cache_lock:
        cache: dict[tuple[Any, ...], list[DuplicateGroup]] = state.__dict__.setdefault("duplicate_groups", {})
        if key in cache:
            return cache[key]
    groups = index.duplicates(level=level, threshold=threshold, keep=keep)
    with _cache_lock:
        while len(cache) >= CACHED:
            cache.pop(next(iter(cache)))
        cache[key] = groups
    return groups


def _group(request: Request, n: int, g: DuplicateGroup) -> DupGroup:
    return DupGroup(group=n, reason=g.reason, keeper=_image(request, g.keeper), duplicates=[_image(request, m) for m in g.duplicates])


def _image(request: Request, m: DuplicateMember) -> DupImage:
    key = request.app.state.settings.api_key
    base = f"{request.scope.get('root_path', '').rstrip('/')}/api/images/{m.id}"

    def signed(kind: str, url: str) -> str:
        return f"{url}?token={auth.sign(key, kind, m.id)}" if key else url

    return DupImage(
        id=m.id, name=os.path.basename(display_path(m.path)), score=round(m.score, 6), width=m.width, height=m.height,
        size=m.size, thumbnail_url=signed("thumbnail", base + "/thumbnail"), image_url=signed("image", base),
    )
