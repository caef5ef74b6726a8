"""Commands over the labelled data set and its vectors: label, eval, export (registered on cli.app)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from . import settings
from .cli import Device, IndexOpt, JsonOpt, _open, _run, _safe, app
from .records import display_path

ByOpt = typer.Option("label", "--by", help="The metadata key: its values are the labels (equal values: the same class)")
KnnOpt = typer.Option(20, "-k", "--k", min=1, help="How many labelled neighbours vote")
DeviceIfNeededOpt = typer.Option(Device.auto, "--device", help="Where the model runs, if needed")


@app.command()
def label(
    images: list[Path] = typer.Argument(..., help="Image(s) to label, each on its own", show_default=False),
    index: Optional[Path] = IndexOpt,
    by: str = ByOpt,
    k: int = KnnOpt,
    model: Optional[str] = typer.Option(None, "--model", help="Model for images not in the index [default: the index's]"),
    device: Device = DeviceIfNeededOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Predict a metadata value (default: label) by a vote of the nearest labelled images."""

    def go() -> None:
        with _open(index, create=False, model=model or settings.model_from_env(), device=device.value) as ix:
            predictions = ix.label(*images, by=by, k=k)
        if as_json:
            typer.echo(json.dumps({"predictions": [p.to_dict() for p in predictions]}, ensure_ascii=False))
            return
        from .label import value_of

        for p in predictions:
            shown = ", ".join(f"{_safe(v.value)} {v.confidence:.2f}" for v in p.labels[:3]) or "no labelled neighbour"
            typer.echo(f"{_safe(display_path(p.query))}: {shown}")
            for h in p.neighbours:
                value = _safe(value_of(h.metadata, by) or "")
                typer.echo(f"  {h.rank:>3}  {h.score:.3f}  {value}  {_safe(display_path(h.path))}")

    _run(go)


@app.command("eval")
def eval_(
    index: Optional[Path] = IndexOpt,
    by: str = ByOpt,
    sample: Optional[int] = typer.Option(None, "--sample", min=1, help="At most N queries, drawn at random (seeded) [default: all]"),
    k: int = KnnOpt,
    copies: Optional[Path] = typer.Option(
        None, "--copies", help="A folder of derived copies named after their originals (bag-red~crop.jpg for bag-red.jpg)"
    ),
    model: Optional[str] = typer.Option(None, "--model", help="Model for the copies [default: the index's]"),
    device: Device = DeviceIfNeededOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Measure retrieval quality on the index's own labels, leave-one-out."""

    def go() -> None:
        with _open(index, create=False, model=model or settings.model_from_env(), device=device.value) as ix:
            result = ix.evaluate(by=by, sample=sample, k=k, copies=copies)
        if as_json:
            typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
            return
        typer.echo(
            f"{result.images} images with a {_safe(by)!r} value, {result.values} distinct; "
            f"{result.retrieval.queries} queries ({result.skipped} skipped: a value no other image has)"
        )
        rows = [("retrieval", result.retrieval)] + ([("near-duplicates", result.duplicates)] if result.duplicates else [])
        for name, scores in rows:
            figures = "  ".join(f"{key} {value:.3f}" for key, value in scores.to_dict().items() if key != "queries")
            typer.echo(f"{name:>16}: {figures}  ({scores.queries} queries)")
        if result.duplicates_skipped:
            typer.echo(f"{len(result.duplicates_skipped)} copies skipped: no indexed image (or several) has their name")

    _run(go)


class ExportFormat(str, Enum):
    npy = "npy"
    jsonl = "jsonl"
    parquet = "parquet"


@app.command("export")
def export_(
    index: Optional[Path] = IndexOpt,
    fmt: ExportFormat = typer.Option(ExportFormat.npy, "--format", help="npy (+ .ids.jsonl beside it), jsonl, or parquet (needs pyarrow)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="File to write [default: dinosearch-export.FORMAT]"),
    as_json: bool = JsonOpt,
) -> None:
    """Write ids, paths, metadata and vectors to a file, for use elsewhere."""

    def go() -> None:
        from .export import default_path

        with _open(index, create=False) as ix:
            report = ix.export(output or default_path(fmt.value), format=fmt.value)
        if as_json:
            typer.echo(json.dumps(report.to_dict(), ensure_ascii=False))
        else:
            typer.echo(f"{report.images} images ({report.dim}-d vectors) written to {', '.join(_safe(f) for f in report.files)}")

    _run(go)
