"""Catalogue metadata: rows from a CSV or JSON-lines file, joined to images on a relative `path` column."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DinosearchError


@dataclass(frozen=True)
class MetadataRows:
    rows: list[tuple[str, dict[str, Any]]]  # (path as written in the file, the other columns)
    source: str


def read_metadata(file: str | os.PathLike[str]) -> MetadataRows:
    """Read CSV (a header row with a `path` column) or JSON lines / a JSON array of objects with `path`."""
    path = Path(file)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DinosearchError(f"cannot read metadata file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DinosearchError(f"metadata file {path} is not UTF-8 text") from None
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json") or text.lstrip().startswith(("{", "[")):
        records = _json_records(text, path)
    else:
        records = list(csv.DictReader(text.splitlines()))
    rows = []
    for n, rec in enumerate(records, start=1):
        if not isinstance(rec, dict) or not rec.get("path"):
            raise DinosearchError(f"{path}: record {n} has no `path` (the image's path relative to the indexed folder)")
        rows.append((str(rec["path"]), {k: v for k, v in rec.items() if k != "path" and k is not None}))
    return MetadataRows(rows, str(path))


def _json_records(text: str, path: Path) -> list[Any]:
    stripped = text.strip()
    try:
        if stripped.startswith("["):
            return list(json.loads(stripped))
        return [json.loads(line) for line in stripped.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise DinosearchError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def resolve(rows: MetadataRows, roots: list[str], indexed: set[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Join rows to indexed absolute paths, trying each root. Returns (path -> metadata, unknown paths)."""
    matched: dict[str, dict[str, Any]] = {}
    unknown: list[str] = []
    for rel, meta in rows.rows:
        for root in roots:
            base = root if os.path.isdir(root) else os.path.dirname(root)
            candidate = os.path.normpath(os.path.join(base, rel))
            if candidate in indexed:
                matched[candidate] = meta
                break
        else:
            unknown.append(rel)
    return matched, unknown
