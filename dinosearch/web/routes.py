"""The JSON API: search by upload, more like this, images and thumbnails by id, stats.

Every handler takes its limits from `app.state.settings` and does the work through the QueryEngine,
so nothing here blocks the event loop. Failures leave as `{"detail": "..."}` (see app.py).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.formparsers import MultiPartException, MultiPartParser

from ..decode import DecodeError
from ..errors import NoLabelsError, UnknownImageError
from ..records import Hit, display_path
from . import auth
from .engine import QueryEngine
from .media import Gone, Thumbnails, iter_file, open_original

MAX_ID = 2**63 - 1  # SQLite's INTEGER range: anything beyond is unknown, not an overflow error
MAX_WHERE = 16

# Ids are decimal digits only: "1.0", "0x1", " 1" or "1\n" are not another spelling of 1.
ImageId = Annotated[str, Path(pattern=r"^[0-9]{1,40}$", description="an indexed image id", examples=["1"])]


class Result(BaseModel):
    rank: int
    id: int
    score: float
    name: str  # the file name (no directory), for results without a catalogue title
    metadata: dict[str, Any] | None
    thumbnail_url: str
    image_url: str


class Vote(BaseModel):
    value: str
    confidence: float
    votes: int


class Prediction(BaseModel):
    by: str
    label: str | None
    labels: list[Vote]  # the top values, best first


class Results(BaseModel):
    results: list[Result]
    prediction: Prediction | None = None  # only when the index has labels (sent only then)


class StatsOut(BaseModel):
    images: int
    vectors: int
    failed: int
    model: str | None
    dim: int | None
    index_type: str
    bytes: int


api = APIRouter(prefix="/api", dependencies=[Depends(auth.require_key)], tags=["api"])
media = APIRouter(prefix="/api", tags=["images"])  # key, or a signed token, checked per route


def _engine(request: Request) -> QueryEngine:
    return request.app.state.engine


class _InMemoryParser(MultiPartParser):
    # Starlette spools file parts over 1 MB to a temporary file; uploads must never touch the disk.
    # The whole body is already capped (guard.py), so memory is bounded by that cap.
    spool_max_size = 1 << 62


SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "the query image file"},
                        "k": {"type": "integer", "default": 10, "minimum": 1, "description": "how many results"},
                        "where": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "metadata filter key=value (repeatable; all must match)",
                        },
                    },
                }
            }
        },
    }
}


@api.post(
    "/search", response_model=Results, response_model_exclude_unset=True, openapi_extra=SEARCH_BODY,
    summary="Images like an uploaded one",
)
async def search(request: Request) -> Results:
    settings = request.app.state.settings
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(415, "send the image as multipart/form-data in a field named `image`")
    parser = _InMemoryParser(request.headers, request.stream(), max_files=1, max_fields=2 * MAX_WHERE, max_part_size=4096)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(422, f"malformed multipart body: {exc.message}") from None
    try:
        image = form.get("image")
        if image is None or isinstance(image, str):
            raise HTTPException(422, "image: a file field named `image` is required")
        data = await image.read()
        k = _parse_k(form.getlist("k"), settings.max_k)
        where = _parse_where([w for w in form.getlist("where") if isinstance(w, str)])
    finally:
        await form.close()
    engine = _engine(request)
    try:
        vector = await engine.vector_of_upload(data)
    except DecodeError as exc:
        raise HTTPException(_decode_status(exc.kind), f"image: {exc.message}") from None
    hits = await engine.read(engine.index.search_vector, vector, k=k, where=where)
    return _results(request, hits, await _prediction(engine, vector))


@api.get(
    "/images/{image_id}/similar", response_model=Results, response_model_exclude_unset=True,
    summary="More like an indexed image",
)
async def similar(
    request: Request,
    image_id: ImageId,
    k: Annotated[int, Query(ge=1, description="how many results")] = 10,
    where: Annotated[list[str] | None, Query(description="metadata filter key=value (repeatable)")] = None,
) -> Results:
    if k > request.app.state.settings.max_k:
        raise HTTPException(422, f"k: at most {request.app.state.settings.max_k}")
    filters = _parse_where(where or [])
    wanted = _id(image_id)
    engine = _engine(request)
    try:
        hits = await engine.read(engine.index.similar, wanted, k=k, where=filters)
    except UnknownImageError:
        raise HTTPException(404, f"no indexed image has id {wanted}") from None
    vector = await engine.read(engine.index.catalogue.vector_of, wanted)
    return _results(request, hits, await _prediction(engine, vector, exclude_ids={wanted}))


@api.get("/stats", response_model=StatsOut, summary="What the index holds (as `dinosearch stats --json`)")
async def stats(request: Request) -> dict[str, Any]:
    engine = _engine(request)
    out = (await engine.read(engine.index.stats)).to_dict()
    out["model"] = _public_model_name(out.get("model"))
    return out


@media.get(
    "/images/{image_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
    summary="A small JPEG of an indexed image (upright, no EXIF)",
)
async def thumbnail(request: Request, image_id: ImageId) -> Response:
    wanted = _id(image_id)
    auth.require_key_or_token(request, "thumbnail", wanted)
    engine = _engine(request)
    thumbs: Thumbnails = request.app.state.thumbnails
    try:
        data, etag = await request.app.state.run_limited(thumbs.get, engine.index, wanted)
    except Gone as exc:
        raise HTTPException(404, str(exc)) from None
    headers = {"ETag": f'"{etag}"', "Cache-Control": "private, max-age=3600", **_IMAGE_HEADERS}
    if request.headers.get("if-none-match") == f'"{etag}"':
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/jpeg", headers=headers)


@media.get(
    "/images/{image_id}",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/*": {}}}},
    summary="The original file of an indexed image",
)
async def original(request: Request, image_id: ImageId) -> StreamingResponse:
    wanted = _id(image_id)
    auth.require_key_or_token(request, "image", wanted)
    engine = _engine(request)
    try:
        opened = await anyio.to_thread.run_sync(open_original, engine.index, wanted)
    except Gone as exc:
        raise HTTPException(404, str(exc)) from None
    headers = {
        "Content-Length": str(opened.size),
        "ETag": f'"{opened.etag}"',
        "Cache-Control": "private, max-age=3600",
        "Content-Disposition": "inline",
        **_IMAGE_HEADERS,
    }
    return StreamingResponse(iter_file(opened.file), media_type=opened.media_type, headers=headers)


# An image is only ever an image: never a document that runs script, whatever its bytes hold.
_IMAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; sandbox"}


def _id(text: str) -> int:
    """A validated id path segment -> int; beyond SQLite's range it cannot exist (404, not an overflow)."""
    if not (text.isascii() and text.isdigit()):
        raise HTTPException(422, "image_id: must be a whole number")
    value = int(text)
    if not 1 <= value <= MAX_ID:
        raise HTTPException(404, "no indexed image has this id")
    return value


def _parse_k(values: list[Any], max_k: int) -> int:
    if not values:
        return 10
    if len(values) > 1 or not isinstance(values[0], str):
        raise HTTPException(422, "k: give it once, as a whole number")
    text = values[0].strip()
    if not text.isdigit() or len(text) > 6:
        raise HTTPException(422, "k: must be a whole number")
    k = int(text)
    if not 1 <= k <= max_k:
        raise HTTPException(422, f"k: must be between 1 and {max_k}")
    return k


def _parse_where(items: list[str]) -> dict[str, str]:
    if len(items) > MAX_WHERE:
        raise HTTPException(422, f"where: at most {MAX_WHERE} filters")
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or len(item) > 1000:
            raise HTTPException(422, "where: each filter is key=value, e.g. where=colour=red")
        out[key] = value.strip()
    return out


def _decode_status(kind: str) -> int:
    if kind == "too-large":
        return 413
    if kind in ("not-an-image", "unsupported-format", "empty"):
        return 415
    return 422  # corrupt, truncated, crashed or timed out: an image we could not use


async def _prediction(engine: QueryEngine, vector: Any, exclude_ids: set[int] | None = None) -> Prediction | None:
    """The k-NN vote for `label` (dinosearch.label), or None when the index has no labels."""
    if vector is None:
        return None
    try:
        p = await engine.read(engine.index.label_vector, vector, exclude_ids=exclude_ids or set())
    except NoLabelsError:
        return None
    return Prediction(by=p.by, label=p.value, labels=[Vote(**v.to_dict()) for v in p.labels[:3]])


def _results(request: Request, hits: list[Hit], prediction: Prediction | None = None) -> Results:
    key = request.app.state.settings.api_key
    root = request.scope.get("root_path", "").rstrip("/")

    def url(kind: str, image_id: int, suffix: str) -> str:
        base = f"{root}/api/images/{image_id}{suffix}"
        return f"{base}?token={auth.sign(key, kind, image_id)}" if key else base

    return Results(
        results=[
            Result(
                rank=h.rank,
                id=h.id,
                score=round(h.score, 6),
                name=os.path.basename(display_path(h.path)),
                metadata=h.metadata,
                thumbnail_url=url("thumbnail", h.id, "/thumbnail"),
                image_url=url("image", h.id, ""),
            )
            for h in hits
        ],
        **({"prediction": prediction} if prediction is not None else {}),
    )


def _public_model_name(model: str | None) -> str | None:
    """A hub id as is; a local checkpoint folder by its last part only (no host paths in responses)."""
    if model is None:
        return None
    if os.path.isabs(model) or model.startswith(("~", ".")) or os.path.isdir(model):
        return os.path.basename(model.rstrip("/\\")) or "local model"
    return model

