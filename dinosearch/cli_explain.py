"""`dinosearch explain`: the heat map of why a result matches a query (registered on cli.app)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from . import settings
from .cli import Backend, BackendOpt, Device, IndexOpt, Precision, PrecisionOpt, _open, _run, app
from .errors import DinosearchError


class ExplainMethod(str, Enum):
    patches = "patches"
    cls = "cls"


@app.command()
def explain(
    images: Optional[list[str]] = typer.Argument(
        None, help="QUERY then RESULT: paths or http(s) URLs (leave one out for --id / --result-id)", show_default=False
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the PNG (the result's size)"),
    query_id: Optional[int] = typer.Option(None, "--id", min=1, help="The query is this indexed image"),
    result_id: Optional[int] = typer.Option(None, "--result-id", min=1, help="The result is this indexed image"),
    crop: Optional[str] = typer.Option(None, "--crop", help="Explain a region of the query: x,y,w,h in pixels, or fractions 0-1"),
    method: ExplainMethod = typer.Option(
        ExplainMethod.patches, "--method", help="patches: each result patch vs the most similar query patch; cls: vs the query's CLS token"
    ),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="How much the colour map covers the image (0-1)"),
    index: Optional[Path] = IndexOpt,
    model: Optional[str] = typer.Option(None, "--model", help="Model [default: the index's]"),
    device: Device = typer.Option(Device.auto, "--device", help="Where the model runs"),
    backend: Backend = BackendOpt,
    precision: Precision = PrecisionOpt,
) -> None:
    """Write a heat map of which parts of RESULT are most like QUERY, blended over RESULT, as a PNG."""
    wanted = 2 - (query_id is not None) - (result_id is not None)
    if len(images or []) != wanted:
        raise typer.BadParameter(f"give {wanted} image(s): QUERY RESULT, less the one named by --id or --result-id", param_hint="IMAGES")

    def go() -> None:
        from .query import Term
        from .region import parse_crop

        rest = list(images or [])
        query = Term(id=query_id) if query_id is not None else Term(image=rest.pop(0))
        result = Term(id=result_id) if result_id is not None else Term(image=rest.pop(0))
        if crop is not None:
            query = Term(image=query.image, id=query.id, crop=parse_crop(crop))
        with _open(index, create=False, model=model or settings.model_from_env(), device=device.value,
                   backend=backend.value, precision=precision.value) as ix:
            png = ix.explain(query, result, method=method.value).png(alpha=alpha)
        try:
            output.write_bytes(png)
        except OSError as exc:
            raise DinosearchError(f"cannot write {output}: {exc.strerror or exc}") from None
        typer.echo(str(output))

    _run(go)
