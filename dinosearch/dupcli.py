"""`dinosearch duplicates`: parse, call Index.duplicates (and the optional move), render text, JSON or CSV."""

from __future__ import annotations

import csv
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .cli import IndexOpt, _open, _run, _safe, app
from .duplicates import LEVELS, DuplicateGroup, DuplicateMember, threshold_for
from .dupmove import MoveReport, move_duplicates
from .records import display_path


class Level(str, Enum):
    exact = "exact"
    near = "near"
    similar = "similar"


CSV_COLUMNS = ("group", "role", "id", "score", "path", "width", "height", "size", "mtime", "reason")


@app.command()
def duplicates(
    index: Optional[Path] = IndexOpt,
    level: Optional[Level] = typer.Option(
        None, "--level", help=f"exact: same content; near (cosine >= {LEVELS['near']}): re-encodes, resizes, small crops "
        f"and edits; similar (cosine >= {LEVELS['similar']}): bursts, the same scene twice [default: near]",
    ),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Cosine to the keeper, overriding the level's default"),
    under: Optional[Path] = typer.Option(None, "--under", help="Only images below this folder"),
    keep: str = typer.Option("largest", "--keep", help="Keeper rule: largest, oldest, newest or path-prefix=PREFIX"),
    move_to: Optional[Path] = typer.Option(
        None, "--move-to", help="Move every duplicate (never a keeper) below this folder, keeping its path; nothing is deleted",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text"),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV, one row per image"),
) -> None:
    """Find duplicates and near-duplicates: groups, each with a suggested keeper and why."""
    if as_json and as_csv:
        raise typer.BadParameter("give --json or --csv, not both")

    def go() -> None:
        name = (level or Level.near).value
        cut = threshold_for(name, threshold)
        with _open(index, create=False) as ix:
            groups = ix.duplicates(level=name, threshold=threshold, keep=keep, under=under)
            moved = None
            if move_to is not None:
                moved = move_duplicates(groups, target=str(move_to), roots=ix.catalogue.roots())
        if as_json:
            out = {"level": name, "threshold": cut, "keep": keep, "groups": [g.to_dict() for g in groups]}
            if moved is not None:
                out["move"] = moved.to_dict()
            typer.echo(json.dumps(out, ensure_ascii=False))
        elif as_csv:
            _write_csv(groups)
        else:
            _print_text(groups, name, cut)
        if moved is not None and not as_json:
            _report_move(moved, err=as_csv)

    _run(go)


def _write_csv(groups: list[DuplicateGroup]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for n, g in enumerate(groups, 1):
        for role, m in [("keeper", g.keeper)] + [("duplicate", d) for d in g.duplicates]:
            d = m.to_dict()
            writer.writerow([n, role, *(d[c] for c in CSV_COLUMNS[2:-1]), g.reason if role == "keeper" else ""])


def _print_text(groups: list[DuplicateGroup], level: str, cut: float) -> None:
    what = "same content" if level == "exact" else f"cosine >= {cut:.3f}"
    if not groups:
        typer.echo(f"no duplicates at level {level} ({what})")
        return
    for n, g in enumerate(groups, 1):
        typer.echo(f"group {n}: {len(g.members)} images; keep the first: {g.reason}")
        for role, m in [("keep", g.keeper)] + [("dup ", d) for d in g.duplicates]:
            typer.echo(f"  {role}  {m.score:.3f}  {_describe(m)}")
    dups = sum(len(g.duplicates) for g in groups)
    typer.echo(f"{len(groups)} groups, {dups} duplicates at level {level} ({what})")


def _describe(m: DuplicateMember) -> str:
    size = f"{m.width}x{m.height}" if m.width and m.height else "?x?"
    return f"{_safe(display_path(m.path))}  ({size}, {m.size:,} bytes)"


def _report_move(report: MoveReport, *, err: bool) -> None:
    """One line: what moved where, what was skipped and why (on stderr when stdout is CSV)."""
    reasons: dict[str, int] = {}
    for s in report.skipped:
        reasons[s.reason] = reasons.get(s.reason, 0) + 1
    why = "; ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
    typer.echo(
        f"moved {len(report.moved)} duplicate(s) to {_safe(display_path(report.target))}"
        + (f"; skipped {len(report.skipped)} ({why})" if report.skipped else "")
        + "; run `dinosearch index` on your folders to update the index",
        err=err,
    )

