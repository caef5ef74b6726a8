"""Command line: parse, call the library, render (table or --json). Nothing else lives here."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from . import settings
from .errors import DinosearchError
from .filters import FilterError, parse_where
from .records import VideoOptions, display_path, format_timestamp

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


class CropMode(str, Enum):
    center = "center"
    squash = "squash"
    border = "border"


class Pooling(str, Enum):
    cls = "cls"
    cls_mean = "cls+mean"
    gem = "gem"


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
    max_pixels: Optional[int] = typer.Option(
        None, "--max-pixels", min=1, help="Largest image to decode, in pixels, checked from its header [default: 178956970]"
    ),
    metadata: Optional[Path] = typer.Option(
        None, "--metadata", help="CSV or JSON-lines file: a `path` column relative to PATH, other columns attached"
    ),
    video: bool = typer.Option(False, "--video", help="Also index videos (MP4/MOV, WebM/MKV, AVI) as frames; needs pip install 'dinosearch[video]'"),
    video_interval: float = typer.Option(2.0, "--video-interval", min=0.1, help="Seconds between sampled video frames (plus scene changes)"),
    video_max_frames: int = typer.Option(200, "--video-max-frames", min=1, help="Frames per video at most"),
    crop_mode: Optional[CropMode] = typer.Option(
        None, "--crop-mode", help="center (the checkpoint's centre crop), squash (whole image to the square) or "
        "border (letterbox on the mean colour) [default: the index's, else center]",
    ),
    resolution: Optional[int] = typer.Option(
        None, "--resolution", help="Side of the model's input square, a multiple of 14 [default: the index's, else 224]"
    ),
    pooling: Optional[Pooling] = typer.Option(
        None, "--pooling", help="cls, cls+mean (CLS + mean of the patch tokens) or gem (over patch tokens) "
        "[default: the index's, else cls]",
    ),
    label_from_folder: bool = typer.Option(
        False, "--label-from-folder", help="Set each image's `label` metadata to its folder's name (a metadata file's label wins)"
    ),
    as_json: bool = JsonOpt,
    index_type: Optional[str] = typer.Option(
        None, "--index-type",
        help="Vector index: auto (exact while small, IVF above 100k images), flat (always exact) or a FAISS "
        "factory string such as IVF4096,SQ8 [default: as chosen before, else auto]",
    ),
    index_memory: Optional[float] = typer.Option(
        None, "--index-memory", min=1, help="Memory budget for the vector index, in MB (auto picks codes that fit)"
    ),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="[ADDRESS]",
        help="Decode and embed on a Ray cluster: ADDRESS (HOST:PORT, ray://HOST:PORT), or none/auto for "
        "$RAY_ADDRESS, else a local one (needs pip install 'dinosearch[ray]')",
    ),
) -> None:
    """Index images under PATHs; re-running only does the work that changed."""
    videos = VideoOptions(interval=video_interval, max_frames=video_max_frames) if video else None

    def go() -> None:
        ix = _open(index, create=True, model=model or settings.model_from_env(), device=device.value,
                   backend=backend.value, precision=precision.value, batch_size=batch_size, workers=workers,
                   index_type=index_type, index_memory_mb=index_memory,
                   crop_mode=crop_mode.value if crop_mode else None, resolution=resolution,
                   pooling=pooling.value if pooling else None)
        with ix, _progress(enabled=not as_json and sys.stderr.isatty()) as progress:
            limit = {"max_pixels": max_pixels} if max_pixels else {}
            report = ix.add(*paths, follow_symlinks=follow_symlinks, metadata=metadata, progress=progress, video=videos,
                            ray=ray, label_from_folder=label_from_folder, **limit)
        if not (report.added or report.updated or report.unchanged or report.failed or report.removed):
            _err(f"warning: no images found under {', '.join(_safe(display_path(str(p))) for p in paths)}")
        for w in report.warnings:
            _err(f"warning: {w}")
        if as_json:
            typer.echo(json.dumps(report.to_dict()))
        else:
            typer.echo(
                f"{report.added} added, {report.updated} updated, {report.removed} removed, "
                f"{report.unchanged} unchanged, {report.failed} failed in {report.seconds:.1f} s"
                + (f" ({report.images_per_second:.1f} images/s)" if report.added + report.updated else "")
                + ("; see `dinosearch failures`" if report.failed else "")
            )
            if report.metadata_matched is not None:
                typer.echo(f"metadata attached to {report.metadata_matched} images")
            if report.labelled is not None:
                typer.echo(f"{report.labelled} images labelled (their folder's name, unless their metadata has a label)")

    _run(go)


@app.command()
def query(
    images: Optional[list[str]] = typer.Argument(
        None, help="Query image(s): paths or http(s) URLs; several: their mean; W:IMAGE weighs one W times (e.g. 2:a.jpg)",
        show_default=False,
    ),
    index: Optional[Path] = IndexOpt,
    k: int = typer.Option(10, "-k", "--k", min=1, help="How many results"),
    min_score: Optional[float] = typer.Option(
        None, "--min-score", min=-1.0, max=1.0, help="Only results with cosine >= this (-1 to 1)"
    ),
    where: Optional[list[str]] = typer.Option(None, "--where", help="Metadata filter key=value (repeatable)"),
    minus: Optional[list[str]] = typer.Option(
        None, "--minus", help="An image to look unlike: path or URL, W:IMAGE to weigh it (repeatable)"
    ),
    ids: Optional[list[int]] = typer.Option(None, "--id", min=1, help="More like an indexed image, by id (repeatable)"),
    minus_ids: Optional[list[int]] = typer.Option(None, "--minus-id", min=1, help="Less like an indexed image, by id (repeatable)"),
    crop: Optional[str] = typer.Option(
        None, "--crop", help="Search by a region of the one query image: x,y,w,h in pixels, or fractions 0-1 (after EXIF orientation)"
    ),
    within: Optional[float] = typer.Option(None, "--within", min=0, help="Only results scoring at least the best score minus this"),
    collapse: Optional[float] = typer.Option(
        None, "--collapse", min=0, max=2, help="Fold a result into a better one within this cosine distance (1 - cosine)"
    ),
    model: Optional[str] = typer.Option(None, "--model", help="Model for images not in the index [default: the index's]"),
    device: Device = typer.Option(Device.auto, "--device", help="Where the model runs, if needed"),
    backend: Backend = BackendOpt,
    precision: Precision = PrecisionOpt,
    all_frames: bool = typer.Option(False, "--all-frames", help="Every matching video frame, not only each video's best"),
    as_json: bool = JsonOpt,
    exact: bool = typer.Option(False, "--exact", help="Compare with every stored vector (exact, slower on a large index)"),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", min=1, help="Lists an IVF index searches [default: its tuned nprobe]"),
) -> None:
    """Print the indexed images most like IMAGE(s) (and --id), and least like --minus (and --minus-id)."""
    if not images and not ids:
        raise typer.BadParameter("give a query IMAGE, or --id N", param_hint="IMAGE")
    if crop is not None and len(images or []) + len(ids or []) != 1:
        raise typer.BadParameter("--crop takes exactly one query image (or one --id)", param_hint="--crop")

    def go() -> None:
        from .query import query_terms

        try:
            filters = parse_where(where or [])
        except FilterError as exc:
            raise DinosearchError(f"--where: {exc}") from None
        terms = query_terms(images or [], ids=ids or [], minus=minus or [], minus_ids=minus_ids or [], crop=crop)
        with _open(index, create=False, model=model or settings.model_from_env(), device=device.value,
                   backend=backend.value, precision=precision.value,
                   on_model_load=_model_notice(enabled=not as_json and sys.stderr.isatty())) as ix:
            if ix.catalogue.count_images() == 0:
                raise DinosearchError(f"the index at {ix.dir} holds no images; add some with `dinosearch index PATH`")
            hits = ix.search(*terms.positives, minus=terms.negatives, k=k, min_score=min_score, where=filters,
                             within=within, collapse=collapse, exact=exact, nprobe=nprobe, all_frames=all_frames)
            unknown = [key for key in filters if not hits and not ix.catalogue.has_metadata_key(key)]
            if unknown:
                raise DinosearchError(
                    f"no indexed image has the metadata key {unknown[0]!r}; attach metadata with `dinosearch index PATH --metadata FILE`"
                )
        if as_json:
            typer.echo(json.dumps({"results": [h.to_dict() for h in hits]}, ensure_ascii=False))
            return
        if not hits:
            typer.echo("no results")
        for h in hits:
            folded = f"  +{len(h.folded)} near-identical" if h.folded else ""
            at = f" @ {format_timestamp(h.timestamp)}" if h.timestamp is not None else ""
            typer.echo(f"{h.rank:>3}  {h.score:.3f}  {_safe(display_path(h.path))}{at}{_describe(h.metadata)}{folded}")

    _run(go)


@app.command()
def stats(
    index: Optional[Path] = IndexOpt,
    as_json: bool = JsonOpt,
    recall: bool = typer.Option(False, "--recall", help="Measure the vector index's recall@10 now, against exact search"),
) -> None:
    """Show what the index holds."""

    def go() -> None:
        from .store.quick import quick_stats

        # Most of the time SQLite alone answers, without importing SQLAlchemy or NumPy.
        s = None if recall else quick_stats(_index_dir(index))
        if s is None:
            with _open(index, create=False) as ix:
                s = ix.stats(measure_recall=recall)
        if as_json:
            typer.echo(json.dumps(s.to_dict()))
        else:
            for key, value in s.to_dict().items():
                typer.echo(f"{key:>10}: {_stat_text(key, value)}")

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


def _stat_text(key: str, value: Any) -> str:
    """None reads as what it means: no model yet, or an exact index without lists to probe."""
    if value is not None:
        return str(value)
    return "- (exact search)" if key in ("nlist", "nprobe") else "none yet (nothing indexed)"


def _describe(meta: dict[str, Any] | None) -> str:
    if not meta:
        return ""
    shown = [str(meta[k]) for k in ("title", "name", "price") if meta.get(k) not in (None, "")]
    return ("  " + " · ".join(_safe(s) for s in shown)) if shown else ""


def _safe(text: str) -> str:
    """Control characters in file names (a newline, an escape) are shown escaped, never obeyed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _model_notice(enabled: bool) -> Any:
    """On a terminal, a notice on stderr while the model loads (seconds of silence otherwise); it goes
    away once the model is up. Only queries that need the model (a new image) load it."""
    if not enabled:
        return None

    @contextmanager
    def notice(name: str) -> Iterator[None]:
        from rich.console import Console
        from rich.markup import escape

        with Console(stderr=True).status(f"loading the model {escape(_safe(name))} for the query image"):
            yield

    return notice


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

                # The first images arrive in a burst once the model is up: a rate means something
                # only after a few batches.
                speed = task.finished_speed or task.speed
                settled = task.completed >= 64 or (task.elapsed or 0) >= 10
                return Text(f"{speed:.1f} img/s" if speed and settled else "")

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
            transient=True,
        )
        self.bar.start()
        # Loading the model takes seconds before the first image: say so rather than stay silent.
        self.task = self.bar.add_task("loading the model and starting the decoders", total=None)

        def update(done: int, total: int) -> None:
            self.bar.update(self.task, completed=done, total=total, description="indexing")

        return update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


# More commands live in modules of their own; importing them registers them on `app`.
from . import cli_dataset, cli_explain, cli_serve  # noqa: E402,F401


from . import dupcli as _dupcli  # noqa: E402,F401  (adds the `duplicates` command to app)


def main() -> None:
    app(args=_ray_without_value(sys.argv[1:]))


def _ray_without_value(args: list[str]) -> list[str]:
    """`--ray` with no ADDRESS means `--ray auto`: at the end, before another option, or before a PATH
    that exists (an address is never a file)."""
    out: list[str] = []
    for i, a in enumerate(args):
        out.append(a)
        if a == "--":  # what follows is PATHs only
            return out + args[i + 1 :]
        if a == "--ray":
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is None or nxt.startswith("-") or Path(nxt).exists():
                out.append("auto")
    return out


if __name__ == "__main__":
    main()
