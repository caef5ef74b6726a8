"""Command line: parse, call the library, render (table or --json). Nothing else lives here."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from . import settings
from .errors import DinosearchError
from .records import display_path

if TYPE_CHECKING:
    from .api import Index

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Local-first image similarity search with DINOv2.",
    pretty_exceptions_enable=False,
)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Backend(str, Enum):
    torch = "torch"
    compile = "compile"
    openvino = "openvino"
    onnxruntime = "onnxruntime"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    int8 = "int8"


BackendOpt = typer.Option(
    Backend.torch, "--backend", envvar="DINOSEARCH_BACKEND",
    help="How the model runs: torch, compile (torch.compile), openvino or onnxruntime "
    "(both CPU only; each needs its package: pip install openvino, or pip install onnxruntime onnx)",
)
PrecisionOpt = typer.Option(
    Precision.auto, "--precision", envvar="DINOSEARCH_PRECISION",
    help="auto: bf16/fp16 on a GPU, bf16 on CPUs with native bf16, else fp32 (always fp32 for onnxruntime); "
    "int8 only with --backend onnxruntime",
)
IndexOpt = typer.Option(None, "--index", help="Index directory [default: $DINOSEARCH_INDEX, else a per-user data dir]")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of text")


def _err(message: str) -> None:
    typer.echo(f"dinosearch: {_safe(message)}", err=True)


def _index_dir(index: Optional[Path]) -> Path:
    return index or settings.default_index_dir()


def _open(index: Optional[Path], *, create: bool, **kwargs: Any) -> "Index":
    from .api import Index

    return Index(_index_dir(index), create=create, **kwargs)


def _run(fn: Any) -> Any:
    """Map run-level errors to one line on stderr and exit 1; Ctrl-C to exit 130."""
    try:
        return fn()
    except DinosearchError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        _err("interrupted; finished work was kept — run the same command again to continue")
        raise typer.Exit(130) from None


@app.command()
def index(
    paths: list[Path] = typer.Argument(..., help="Folders or files to index (recursively)", show_default=False),
    index: Optional[Path] = IndexOpt,
    model: Optional[str] = typer.Option(
        None, "--model", help="Hub id or local checkpoint folder [default: $DINOSEARCH_MODEL, else the index's model, else facebook/dinov2-small]"
    ),
    device: Device = typer.Option(Device.auto, "--device", help="Where the model runs"),
    backend: Backend = BackendOpt,
    precision: Precision = PrecisionOpt,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Images per model batch [default: 16 on CPU, 64 on GPU]"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Decode processes [default: CPU count]"),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks", help="Follow symbolic links while walking"),
    metadata: Optional[Path] = typer.Option(
        None, "--metadata", help="CSV or JSON-lines file: a `path` column relative to PATH, other columns attached"
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Index images under PATHs; re-running only does the work that changed."""

    def go() -> None:
        ix = _open(index, create=True, model=model or settings.model_from_env(), device=device.value,
                   backend=backend.value, precision=precision.value, batch_size=batch_size, workers=workers)
        with ix, _progress(enabled=not as_json and sys.stderr.isatty()) as progress:
            report = ix.add(*paths, follow_symlinks=follow_symlinks, metadata=metadata, progress=progress)
        for w in report.warnings:
            _err(f"warning: {w}")
        if as_json:
            typer.echo(json.dumps(report.to_dict()))
        else:
            typer.echo(
                f"{report.added} added, {report.updated} updated, {report.removed} removed, "
                f"{report.unchanged} unchanged, {report.failed} failed in {report.seconds:.1f} s "
                f"({report.images_per_second:.1f} images/s)"
                + ("; see `dinosearch failures`" if report.failed else "")
            )
            if report.metadata_matched is not None:
                typer.echo(f"metadata attached to {report.metadata_matched} images")

    _run(go)


@app.command()
def query(
    images: list[Path] = typer.Argument(..., help="Query image(s); several: their mean", show_default=False),
    index: Optional[Path] = IndexOpt,
    k: int = typer.Option(10, "-k", "--k", min=1, help="How many results"),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Only results with cosine >= this"),
    where: Optional[list[str]] = typer.Option(None, "--where", help="Metadata filter key=value (repeatable)"),
    model: Optional[str] = typer.Option(None, "--model", help="Model for images not in the index [default: the index's]"),
    device: Device = typer.Option(Device.auto, "--device", help="Where the model runs, if needed"),
    backend: Backend = BackendOpt,
    precision: Precision = PrecisionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Print the indexed images most like IMAGE(s)."""

    def go() -> None:
        filters = _parse_where(where or [])
        with _open(index, create=False, model=model or settings.model_from_env(), device=device.value,
                   backend=backend.value, precision=precision.value) as ix:
            hits = ix.search(*images, k=k, min_score=min_score, where=filters)
        if as_json:
            typer.echo(json.dumps({"results": [h.to_dict() for h in hits]}, ensure_ascii=False))
            return
        if not hits:
            typer.echo("no results")
        for h in hits:
            typer.echo(f"{h.rank:>3}  {h.score:.3f}  {_safe(display_path(h.path))}{_describe(h.metadata)}")

    _run(go)


@app.command()
def stats(index: Optional[Path] = IndexOpt, as_json: bool = JsonOpt) -> None:
    """Show what the index holds."""

    def go() -> None:
        from .store.quick import quick_stats

        # Most of the time SQLite alone answers, without importing SQLAlchemy or NumPy.
        s = quick_stats(_index_dir(index))
        if s is None:
            with _open(index, create=False) as ix:
                s = ix.stats()
        if as_json:
            typer.echo(json.dumps(s.to_dict()))
        else:
            for key, value in s.to_dict().items():
                typer.echo(f"{key:>10}: {value}")

    _run(go)


@app.command()
def failures(index: Optional[Path] = IndexOpt, as_json: bool = JsonOpt) -> None:
    """List files that could not be indexed, and why."""

    def go() -> None:
        with _open(index, create=False) as ix:
            rows = ix.failures()
        if as_json:
            typer.echo(json.dumps([f.to_dict() for f in rows], ensure_ascii=False))
            return
        if not rows:
            typer.echo("no failures")
        for f in rows:
            typer.echo(f"{_safe(display_path(f.path))}\n    {f.error}: {f.message}")

    _run(go)


def _parse_where(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DinosearchError(f"--where takes key=value, got {item!r}")
        out[key] = value
    return out


def _describe(meta: dict[str, Any] | None) -> str:
    if not meta:
        return ""
    shown = [str(meta[k]) for k in ("title", "name", "price") if meta.get(k) not in (None, "")]
    return ("  " + " · ".join(_safe(s) for s in shown)) if shown else ""


def _safe(text: str) -> str:
    """Control characters in file names (a newline, an escape) are shown escaped, never obeyed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _progress:
    """A rich progress bar with rate and ETA on a terminal; nothing otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        class Rate(TextColumn):
            def __init__(self) -> None:
                super().__init__("")

            def render(self, task: Any) -> Any:
                from rich.text import Text

                speed = task.finished_speed or task.speed
                return Text(f"{speed:.1f} img/s" if speed else "")

        self.bar = Progress(
            TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
            transient=True,
        )
        self.bar.start()

        def update(done: int, total: int) -> None:
            if self.task is None:
                self.task = self.bar.add_task("index", total=total)
            self.bar.update(self.task, completed=done, total=total)

        return update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@app.command()
def serve(
    index: Optional[Path] = IndexOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback needs --api-key"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on"),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="DINOSEARCH_API_KEY", help="Require `Authorization: Bearer KEY` on every /api/ route"
    ),
    insecure_no_api_key: bool = typer.Option(
        False, "--insecure-no-api-key",
        help="Allow a non-loopback --host without --api-key (anyone who reaches it can see your images)",
    ),
    allowed_host: Optional[list[str]] = typer.Option(
        None, "--allowed-host", help="Another name clients reach the server by, accepted in the Host header (repeatable)"
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="Model for uploaded images (default: the one the index was made with)"
    ),
    device: Device = typer.Option(Device.auto, "--device", help="Where the model runs"),
    backend: Backend = BackendOpt,
    precision: Precision = PrecisionOpt,
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.01, help="Largest request body, in MB"),
    max_megapixels: float = typer.Option(50.0, "--max-megapixels", min=0.01, help="Largest uploaded image, in megapixels"),
    queue_size: int = typer.Option(32, "--queue-size", min=1, help="Uploads in flight before the server answers 503"),
) -> None:
    """Serve the search page and the JSON API (FastAPI on uvicorn)."""

    def go() -> None:
        import os

        # Settings only: the app itself is imported by uvicorn from the string below.
        from .accel import backend_device, check_backend
        from .web.settings import ENV_VAR, WebSettings, check_bind

        check_bind(host, api_key, insecure_no_api_key)
        # The model loads once the server is up: refuse an impossible backend now, in one line.
        check_backend(backend.value, backend_device(backend.value, device.value), precision.value)
        directory = _index_dir(index)
        _open(directory, create=False).close()  # a missing index fails here, in one line
        web = WebSettings(
            index_dir=str(directory), model=model or settings.model_from_env(), device=device.value,
            backend=backend.value, precision=precision.value, host=host,
            port=port, api_key=api_key or None, allowed_hosts=tuple(allowed_host or ()),
            insecure_no_api_key=insecure_no_api_key, max_body_bytes=int(max_upload_mb * 1024 * 1024),
            max_pixels=int(max_megapixels * 1_000_000), queue_size=queue_size,
        )
        os.environ[ENV_VAR] = web.to_json()
        import uvicorn

        uvicorn.run(
            "dinosearch.web.app:app_from_env", factory=True, host=host, port=port,
            proxy_headers=False, server_header=False, log_level="info", timeout_graceful_shutdown=5,
        )

    _run(go)


from . import dupcli as _dupcli  # noqa: E402,F401  (adds the `duplicates` command to app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
