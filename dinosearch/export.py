"""Export: ids, paths, metadata and vectors, for use outside dinosearch.

Layouts (rows in id order, from one consistent read of the catalogue; n images, dim floats each):

- npy: PATH is a NumPy .npy array of shape (n, dim), dtype little-endian float32 ('<f4'), each row an
  L2-normalised vector; beside it, PATH's stem + `.ids.jsonl`: line i is `{"id", "path", "metadata"}`
  of row i.
- jsonl: one JSON object per line: `{"id", "path", "metadata", "vector": [dim floats]}` (each float
  prints the float32 exactly: read back as float32 it is the stored value).
- parquet (needs pyarrow): columns id int64, path string, metadata string (JSON text, null when
  none), vector fixed_size_list<float32>[dim]; the file's key-value metadata holds
  `dinosearch.model`, the index's model fingerprint as JSON.

Paths that are not UTF-8 are written with `\\xNN` escapes (display_path). The file is written under a
temporary name and renamed into place, so an interrupted export never leaves a partial file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DinosearchError
from .records import ModelFingerprint, display_path

FORMATS = ("npy", "jsonl", "parquet")


@dataclass(frozen=True)
class ExportReport:
    format: str
    files: tuple[str, ...]  # what was written, the main file first
    images: int
    dim: int

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "files": list(self.files), "images": self.images, "dim": self.dim}


def default_path(fmt: str) -> Path:
    return Path(f"dinosearch-export.{fmt}")


def export(catalogue: Any, fingerprint: ModelFingerprint, *, fmt: str, path: str | os.PathLike[str]) -> ExportReport:
    """Write every image of `catalogue` to `path` in format `fmt` (see the module's layouts).

    Raises DinosearchError for an unknown format, a missing pyarrow (parquet) or a file that cannot be written.
    """
    if fmt not in FORMATS:
        raise DinosearchError(f"unknown export format {fmt!r}; use {', '.join(FORMATS)}")
    path = Path(path)
    rows = catalogue.snapshot()
    count = next(rows)
    try:
        if fmt == "npy":
            sidecar = path.with_name(path.name.removesuffix(".npy") + ".ids.jsonl")
            _npy(rows, count, fingerprint.dim, path, sidecar)
            files: tuple[Path, ...] = (path, sidecar)
        elif fmt == "jsonl":
            _jsonl(rows, path)
            files = (path,)
        else:
            _parquet(rows, fingerprint, path)
            files = (path,)
    except OSError as exc:
        raise DinosearchError(f"cannot write {exc.filename or path}: {exc.strerror}") from None
    finally:
        rows.close()
    return ExportReport(fmt, tuple(str(f) for f in files), count, fingerprint.dim)


@contextmanager
def _replacing(path: Path) -> Iterator[Any]:
    """A binary file that becomes `path` only once it is complete."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _record(i: int, p: str, meta: Any) -> dict[str, Any]:
    return {"id": int(i), "path": display_path(p), "metadata": meta}


def _npy(rows: Iterator[Any], count: int, dim: int, path: Path, sidecar: Path) -> None:
    with _replacing(path) as out, _replacing(sidecar) as ids_out:
        np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": (count, dim)})
        written = 0
        for ids, paths, metas, vectors in rows:
            out.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
            ids_out.writelines((json.dumps(_record(*r), ensure_ascii=False) + "\n").encode() for r in zip(ids, paths, metas))
            written += len(ids)
        if written != count:  # cannot happen inside one read transaction; never leave a lying header
            raise DinosearchError(f"the index changed during the export ({count} rows, then {written}); run it again")


def _jsonl(rows: Iterator[Any], path: Path) -> None:
    with _replacing(path) as out:
        for ids, paths, metas, vectors in rows:
            for r, v in zip(zip(ids, paths, metas), vectors.tolist()):
                out.write((json.dumps({**_record(*r), "vector": v}, ensure_ascii=False) + "\n").encode())


def _parquet(rows: Iterator[Any], fingerprint: ModelFingerprint, path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DinosearchError("--format parquet needs pyarrow: pip install 'dinosearch[parquet]'") from None
    schema = pa.schema(
        [("id", pa.int64()), ("path", pa.string()), ("metadata", pa.string()),
         ("vector", pa.list_(pa.float32(), fingerprint.dim))],
        metadata={"dinosearch.model": json.dumps(fingerprint.to_dict())},
    )
    with _replacing(path) as out, pq.ParquetWriter(out, schema) as writer:
        for ids, paths, metas, vectors in rows:
            flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
            writer.write_table(pa.table({
                "id": pa.array(ids, type=pa.int64()),
                "path": [display_path(p) for p in paths],
                "metadata": [None if m is None else json.dumps(m, ensure_ascii=False) for m in metas],
                "vector": pa.FixedSizeListArray.from_arrays(flat, fingerprint.dim),
            }, schema=schema))
