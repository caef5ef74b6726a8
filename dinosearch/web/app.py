"""The FastAPI app: `create_app(settings)`, and `app_from_env()` for `dinosearch serve` (uvicorn factory).

Run-level errors become HTTP statuses here and nowhere else; every error leaves as
`{"detail": "..."}`, never with a traceback or a host path (those go to the server log).
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..api import Index
from .dup_routes import dup_api, dup_page
from .engine import ModelUnavailable, Overloaded, QueryEngine
from .explain import explain_api
from .guard import Guard
from .media import Thumbnails
from .routes import api, media
from ..settings import WebSettings, allowed_host_names

log = logging.getLogger("dinosearch.web")
HERE = Path(__file__).parent
T = TypeVar("T")

# The page runs only its own script and styles; images come from this server or the local file picker,
# and videos (a video frame's result plays in the page) from this server.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def app_from_env() -> FastAPI:
    """The uvicorn factory: settings from $DINOSEARCH_WEB_SETTINGS, written by `dinosearch serve`."""
    return create_app(WebSettings.from_env(os.environ))


def _lifespan(settings: WebSettings, index: Index | None) -> Callable[[FastAPI], Any]:
    """Open the index and start the model thread when the app starts; stop and close them at the end."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ix = index or Index(
            settings.index_dir, model=settings.model, device=settings.device, backend=settings.backend,
            precision=settings.precision, create=False,
        )
        engine = QueryEngine(
            ix,
            queue_size=settings.queue_size,
            batch_size=settings.batch_size,
            decode_workers=settings.decode_workers,
            decode_timeout=settings.decode_timeout,
            max_pixels=settings.max_pixels,
            request_timeout=settings.request_timeout,
        )
        engine.start()
        app.state.engine = engine
        try:
            await engine.read(ix.stats)  # load the vectors now rather than on the first search
        except Exception:  # noqa: BLE001 - a broken index still serves /healthz; searches then answer 500
            log.exception("dinosearch: could not load the index vectors")
        try:
            yield
        finally:
            engine.close()
            if index is None:
                ix.close()

    return lifespan


def create_app(settings: WebSettings, *, index: Index | None = None) -> FastAPI:
    """The app over the index in `settings.index_dir` (or over `index`, which the caller then owns).

    The index is opened and the model thread started when the app starts (lifespan), not here.
    """
    app = FastAPI(
        title="dinosearch",
        version=__version__,
        description="Image similarity search over a local index (DINOv2 + FAISS + SQLite).",
        docs_url=None,  # served below with Swagger UI's assets from the package, not from a CDN
        redoc_url=None,
        lifespan=_lifespan(settings, index),
    )
    app.state.settings = settings
    app.state.thumbnails = Thumbnails(size=settings.thumb_size, cache_bytes=settings.thumb_cache_bytes)
    limiter = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))  # thumbnail decodes: CPU bound

    async def run_limited(fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    app.state.run_limited = run_limited
    app.add_middleware(Guard, allowed_hosts=allowed_host_names(settings), max_body_bytes=settings.max_body_bytes)
    _add_error_handlers(app)
    app.include_router(api)
    app.include_router(media)
    app.include_router(explain_api)
    app.include_router(dup_api)
    app.include_router(dup_page)

    page = (HERE / "templates" / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{max_body_bytes}}", str(settings.max_body_bytes)).replace(
        "{{version}}", html.escape(__version__)
    )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/healthz", tags=["health"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _add_docs(app)
    return app


def _add_docs(app: FastAPI) -> None:
    """/docs works offline: Swagger UI's script and styles come from the fastapi-offline package."""
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs-static", StaticFiles(directory=assets), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title="dinosearch - API",
            swagger_js_url=f"{root}/docs-static/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs-static/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs-static/favicon.png",
        )


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default lists every error with the input echoed back; one line says enough.
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("path", "query", "body"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return JSONResponse(
            {"detail": "the server is busy with other images; try again in a moment"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(ModelUnavailable)
    async def unavailable(request: Request, exc: ModelUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": "the model is not available; see the server log"}, status_code=503, headers={"Retry-After": "30"}
        )

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        # Messages of run-level errors can name host paths: they go to the log, not to the client.
        log.error("dinosearch: %s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)
