"""Why this match: `GET /api/images/{id}/explain?like=ID` and `POST /api/images/{id}/explain` (an
uploaded query image) answer a PNG heat map over image `id` (see dinosearch/explain.py).

The upload is decoded in the sandboxed decode workers, as a search's is; the indexed images are read
only while they are what was indexed (media.open_original). The model runs in worker threads, off
the event loop; nothing is stored.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from ..api import Term
from ..decode import DecodeError
from ..errors import ImageError, ModelLoadError, ModelMismatchError, QueryError, UnknownImageError
from ..records import FailureKind
from . import auth
from .engine import ModelUnavailable, QueryEngine
from .media import Gone, open_original
from .routes import _IMAGE_HEADERS, ImageId, _decode_status, _id, image_files, parse_form
from .terms import parse_crop_param

log = logging.getLogger("dinosearch.web")
MAX_SIDE = 4096

explain_api = APIRouter(prefix="/api", dependencies=[Depends(auth.require_key)], tags=["api"])

Method = Annotated[str, Query(pattern="^(patches|cls)$", description="patches: each patch vs the most similar query patch; cls: vs the query's CLS token")]
Size = Annotated[int, Query(ge=16, le=MAX_SIDE, description="longest side of the PNG in pixels (a smaller image keeps its size)")]

PNG = {200: {"content": {"image/png": {}}, "description": "the result image with the heat map blended over it"}}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {"image": {"type": "string", "format": "binary", "description": "the query image file"}},
        }}},
    }
}


@explain_api.get("/images/{image_id}/explain", response_class=Response, responses=PNG, summary="Why an image matches an indexed one")
async def explain_like(
    request: Request,
    image_id: ImageId,
    like: Annotated[str, Query(pattern=r"^[0-9]{1,40}$", description="the indexed query image id")],
    crop: Annotated[str | None, Query(description="a region of the query: x,y,w,h as fractions 0-1 (or pixels)")] = None,
    method: Method = "patches",
    size: Size = 1024,
) -> Response:
    result, query = _id(image_id), _id(like)
    box = parse_crop_param(crop)
    engine: QueryEngine = request.app.state.engine
    query_bytes = await request.app.state.run_limited(_indexed_bytes, engine, query)
    return await _explain(request, Term(image=query_bytes, crop=box), result, method=method, size=size)


@explain_api.post(
    "/images/{image_id}/explain", response_class=Response, responses=PNG, openapi_extra=UPLOAD_BODY,
    summary="Why an image matches an uploaded one",
)
async def explain_upload(request: Request, image_id: ImageId, method: Method = "patches", size: Size = 1024) -> Response:
    result = _id(image_id)
    form = await parse_form(request, max_files=1, max_fields=1)
    try:
        data = (await image_files(form))[0]
    finally:
        await form.close()
    engine: QueryEngine = request.app.state.engine
    if await engine.read(engine.index.file_of, result) is None:  # before any decoding
        raise HTTPException(404, f"no indexed image has id {result}")
    try:
        pixels = await engine.pixels_of_upload(data)
    except DecodeError as exc:
        raise HTTPException(_decode_status(exc.kind), f"image: {exc.message}") from None
    return await _explain(request, pixels, result, method=method, size=size)


async def _explain(request: Request, query: Any, result: int, *, method: str, size: int) -> Response:
    engine: QueryEngine = request.app.state.engine
    result_bytes = await request.app.state.run_limited(_indexed_bytes, engine, result)

    def run() -> bytes:
        return engine.index.explain(query, result_bytes, method=method, max_side=size).png()

    try:
        png = await request.app.state.run_limited(run)
    except (ModelLoadError, ModelMismatchError) as exc:
        log.error("dinosearch: explain has no model: %s", exc)
        raise ModelUnavailable() from None
    except QueryError as exc:
        raise HTTPException(422, str(exc)) from None
    except UnknownImageError as exc:
        raise HTTPException(404, str(exc)) from None
    except ImageError as exc:  # an indexed file that no longer decodes; its message may name a host path
        status = 404 if exc.kind != FailureKind.TOO_LARGE else 413
        raise HTTPException(status, "an image of this explanation can no longer be decoded; run `dinosearch index` again") from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600", **_IMAGE_HEADERS})


def _indexed_bytes(engine: QueryEngine, image_id: int) -> bytes:
    """The file of an indexed id while it is what was indexed. Raises HTTPException 404."""
    try:
        opened = open_original(engine.index, image_id)
    except Gone as exc:
        raise HTTPException(404, str(exc)) from None
    with opened.file:
        return opened.file.read()
