"""The JSON API: search by upload, more like this, images and thumbnails by id, stats.

Every handler takes its limits from `app.state.settings` and does the work through the QueryEngine,
so nothing here blocks the event loop. Failures leave as `{"detail": "..."}` (see app.py).
"""

from __future__ import annotations

import io
import os
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ..api import Term
from ..query import combine
from ..decode import DecodeError, sniff
from ..label import Prediction as LabelPrediction
from ..filters import FilterError, parse_where
from ..records import FailureKind, Hit, display_path
from . import auth
from .engine import QueryEngine
from .terms import MAX_QUERY_IDS, parse_crop_param, parse_refine, run_query
from .media import Gone, Thumbnails, byte_range, iter_file, iter_part, open_original

MAX_ID = 2**63 - 1  # SQLite's INTEGER range: anything beyond is unknown, not an overflow error
MAX_WHERE = 16
MAX_QUERY_IMAGES = 4  # uploads in one query ("add a photo")

# Ids are decimal digits only: "1.0", "0x1", " 1" or "1\n" are not another spelling of 1.
ImageId = Annotated[str, Path(pattern=r"^[0-9]{1,40}$", description="an indexed image id", examples=["1"])]


class Result(BaseModel):
    rank: int
    id: int
    score: float
    name: str  # the file name (no directory), for results without a catalogue title
    metadata: dict[str, Any] | None
    thumbnail_url: str
    image_url: str  # a video frame's: the video (the page adds #t=timestamp)
    folded: list[int] | None = None  # only with `collapse`: ids of near-identical results folded into this one
    timestamp: float | None = None  # seconds into the video, for a video frame; null for a photo


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
    nlist: int | None = None
    nprobe: int | None = None
    code_size: int | None = None
    recall: float | None = None


api = APIRouter(prefix="/api", dependencies=[Depends(auth.require_key)], tags=["api"])
media = APIRouter(prefix="/api", tags=["images"])  # key, or a signed token, checked per route


def _engine(request: Request) -> QueryEngine:
    return request.app.state.engine


class _InMemoryParser(MultiPartParser):
    # Starlette spools file parts over 1 MB to a temporary file; uploads must never touch the disk.
    # The whole body is already capped (guard.py), so memory is bounded by that cap.
    spool_max_size = 1 << 62

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        part = self._current_part
        if part.file is None and part.field_name == "image":
            # Only `filename*=UTF-8''...` (RFC 2231/5987, as clients send non-ASCII names) or no file name
            # at all (curl -F 'image=<photo.jpg'): Starlette sees a text field, capped at 4 KB. It is the image.
            self._current_fields -= 1
            self._current_files += 1
            if self._current_files > self.max_files:
                raise MultiPartException("send one image")
            part.file = UploadFile(file=io.BytesIO(), size=0, filename="", headers=Headers(raw=part.item_headers))  # type: ignore[arg-type]


SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "array", "items": {"type": "string", "format": "binary"},
                            "description": f"the query image file (repeatable, at most {MAX_QUERY_IMAGES}: their mean)",
                        },
                        "like": {"type": "array", "items": {"type": "integer"}, "description": "indexed image ids to look like too (repeatable)"},
                        "minus": {"type": "array", "items": {"type": "integer"}, "description": "indexed image ids to look unlike (repeatable)"},
                        "within": {"type": "number", "description": "only results scoring at least the best score minus this"},
                        "collapse": {"type": "number", "description": "fold results within this cosine distance of a better one"},
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


async def parse_form(request: Request, *, max_files: int, max_fields: int) -> Any:
    """A multipart/form-data body, parsed in memory; the caller closes it. Raises HTTPException 415, 422."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise HTTPException(415, "send the image as multipart/form-data in a field named `image`")
    parser = _InMemoryParser(request.headers, request.stream(), max_files=max_files, max_fields=max_fields, max_part_size=4096)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(422, f"malformed multipart body: {exc.message}") from None


async def image_files(form: Any) -> list[bytes]:
    """The bytes of each `image` file part (at least one). Raises HTTPException 422."""
    images = form.getlist("image")
    if not images or any(isinstance(image, str) for image in images):
        raise HTTPException(422, "image: a file field named `image` is required")
    datas = [await image.read() for image in images]
    for image, data in zip(images, datas):
        if not image.filename and len(data) < 4096 and sniff(data) == "text":
            raise HTTPException(422, "image: got a text field; send the image as a file part, e.g. curl -F image=@photo.jpg")
    return datas


@api.post("/search", response_model=Results, openapi_extra=SEARCH_BODY, summary="Images like an uploaded one")
async def search(request: Request) -> Any:
    settings = request.app.state.settings
    form = await parse_form(request, max_files=MAX_QUERY_IMAGES, max_fields=2 * MAX_WHERE + 2 * MAX_QUERY_IDS + 4)
    try:
        datas = await image_files(form)
        k = _parse_k(form.getlist("k"), settings.max_k)
        where = _parse_where([w for w in form.getlist("where") if isinstance(w, str)])
        fields = {name: [v for v in form.getlist(name) if isinstance(v, str)] for name in ("like", "minus", "within", "collapse")}
    finally:
        await form.close()
    refine = parse_refine(fields)
    engine = _engine(request)
    vectors = []
    for n, data in enumerate(datas):
        try:
            vectors.append(await engine.vector_of_upload(data))
        except DecodeError as exc:
            name = "image" if len(datas) == 1 else f"image {n + 1}"
            message = exc.message
            if exc.kind == FailureKind.TOO_LARGE:  # the server's own limit is --max-megapixels, not index's knob
                message = message.split("; ")[0] + "; downscale it (the server's limit is set by --max-megapixels)"
            raise HTTPException(_decode_status(exc.kind), f"{name}: {message}") from None
    terms = [Term(vector=v) for v in vectors] + [Term(id=i) for i in refine.like]
    answer = await run_query(engine, terms, refine, k=k, where=where, vote=combine(vectors) if vectors else None)
    assert answer is not None  # None only for a vote by id
    hits, vote = answer
    return _results(request, hits, _prediction(vote), collapsed=refine.collapse is not None)


@api.get(
    "/images/{image_id}/similar", response_model=Results, response_model_exclude_unset=True,
    summary="More like an indexed image",
)
async def similar(
    request: Request,
    image_id: ImageId,
    k: Annotated[int, Query(ge=1, description="how many results")] = 10,
    where: Annotated[list[str] | None, Query(description="metadata filter key=value (repeatable)")] = None,
    like: Annotated[list[str] | None, Query(description="other indexed image ids to look like too (repeatable)")] = None,
    minus: Annotated[list[str] | None, Query(description="indexed image ids to look unlike (repeatable)")] = None,
    crop: Annotated[str | None, Query(description="search by a region: x,y,w,h as fractions 0-1 (or pixels) of the upright image")] = None,
    within: Annotated[str | None, Query(description="only results scoring at least the best score minus this")] = None,
    collapse: Annotated[str | None, Query(description="fold results within this cosine distance (1 - cosine) of a better one")] = None,
) -> Any:
    if k > request.app.state.settings.max_k:
        raise HTTPException(422, f"k: at most {request.app.state.settings.max_k}")
    filters = _parse_where(where or [])
    wanted = _id(image_id)
    refine = parse_refine(
        {"like": like or [], "minus": minus or [], "within": [within] if within else [], "collapse": [collapse] if collapse else []}
    )
    box = parse_crop_param(crop)
    engine = _engine(request)
    terms = [Term(id=wanted, crop=box)] + [Term(id=i) for i in refine.like]
    answer = await run_query(engine, terms, refine, k=k, where=filters, vote=wanted)  # the whole image votes
    if answer is None:
        raise HTTPException(404, f"no indexed image has id {wanted}")
    hits, vote = answer
    return _results(request, hits, _prediction(vote), collapsed=refine.collapse is not None)


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
        "Accept-Ranges": "bytes",
        **_IMAGE_HEADERS,
    }
    try:
        part = byte_range(request.headers.get("range"), opened.size)
    except ValueError:
        opened.file.close()
        raise HTTPException(416, "the requested range is outside the file", headers={"Content-Range": f"bytes */{opened.size}"}) from None
    if part is not None:  # a <video> element seeking: just the bytes asked for
        start, length = part
        headers.update({"Content-Length": str(length), "Content-Range": f"bytes {start}-{start + length - 1}/{opened.size}"})
        return StreamingResponse(iter_part(opened.file, start, length), status_code=206, media_type=opened.media_type, headers=headers)
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
    try:
        return parse_where(items, max_filters=MAX_WHERE)
    except FilterError as exc:
        raise HTTPException(422, f"where: {exc}") from None


def _decode_status(kind: str) -> int:
    if kind == FailureKind.TOO_LARGE:
        return 413
    if kind in (FailureKind.NOT_AN_IMAGE, FailureKind.UNSUPPORTED_FORMAT, FailureKind.UNSUPPORTED, FailureKind.EMPTY):
        return 415
    return 422  # corrupt, truncated, crashed or timed out: an image we could not use


def _prediction(p: LabelPrediction | None) -> Prediction | None:
    """The k-NN vote for `label` (dinosearch.label) as the API shows it: the three best values."""
    if p is None:
        return None
    return Prediction(by=p.by, label=p.value, labels=[Vote(**v.to_dict()) for v in p.labels[:3]])


def _results(request: Request, hits: list[Hit], prediction: Prediction | None = None, *, collapsed: bool = False) -> Any:
    key = request.app.state.settings.api_key
    root = request.scope.get("root_path", "").rstrip("/")

    def url(kind: str, image_id: int, suffix: str) -> str:
        base = f"{root}/api/images/{image_id}{suffix}"
        return f"{base}?token={auth.sign(key, kind, image_id)}" if key else base

    results = Results(
        results=[
            Result(
                rank=h.rank,
                id=h.id,
                score=round(h.score, 6),
                name=os.path.basename(display_path(h.path)),
                metadata=h.metadata,
                thumbnail_url=url("thumbnail", h.id, "/thumbnail"),
                image_url=url("image", h.id, ""),
                folded=list(h.folded) if h.folded is not None else None,
                timestamp=h.timestamp,
            )
            for h in hits
        ],
        **({"prediction": prediction} if prediction is not None else {}),
    )
    # `folded` only when collapsing was asked for, `prediction` only when the index has labels:
    # otherwise the results keep their usual fields.
    body = results.model_dump(exclude=None if collapsed else {"results": {"__all__": {"folded"}}})
    if prediction is None:
        body.pop("prediction", None)
    return JSONResponse(body)


def _public_model_name(model: str | None) -> str | None:
    """A hub id as is; a local checkpoint folder by its last part only (no host paths in responses)."""
    if model is None:
        return None
    if os.path.isabs(model) or model.startswith(("~", ".")) or os.path.isdir(model):
        return os.path.basename(model.rstrip("/\\")) or "local model"
    return model


