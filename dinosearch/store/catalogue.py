"""The catalogue: every image's row and vector, failures and settings, in SQLite via SQLAlchemy Core."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import nullcontext
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, Integer, Text, bindparam, cast, create_engine, delete, event, func, insert, select, text, update

from ..errors import DinosearchError, SchemaTooNewError
from ..records import Failure
from . import schema
from .layout import DB_NAME, VERSION_KEY, disk_bytes
from .lock import WriterLock
from .schema import failures, images, settings



def path_key(path: str) -> bytes:
    """A path as the bytes stored in SQLite."""
    return os.fsencode(path)


def path_of(key: bytes) -> str:
    return os.fsdecode(key)


def prefix_range(root: str) -> tuple[bytes, bytes]:
    """[lo, hi) of the stored keys of every path strictly below `root` (BLOBs compare by bytes)."""
    lo = path_key(root.rstrip(os.sep) + os.sep)
    return lo, lo[:-1] + bytes([lo[-1] + 1])


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def vector_from(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


@dataclass(frozen=True)
class Known:
    """What the catalogue knows of a path: enough to skip it unchanged without opening it."""

    id: int
    size: int
    mtime_ns: int
    content_hash: str


@dataclass(frozen=True)
class ImageRow:
    """A row to write: a new image, or new content for an existing id."""

    path: str
    root: str
    size: int
    mtime_ns: int
    content_hash: str
    vector: bytes
    width: int | None = None
    height: int | None = None
    format: str | None = None
    meta: dict[str, Any] | None = None
    id: int | None = None  # set: update this row in place (its id stays stable)


@dataclass(frozen=True)
class FailureRow:
    path: str
    root: str
    size: int
    mtime_ns: int
    error: str
    message: str


class Catalogue:
    def __init__(self, index_dir: Path, *, create: bool = True):
        self.dir = Path(index_dir)
        self.db_path = self.dir / DB_NAME
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(f"sqlite:///{self.db_path}")
        event.listen(self.engine, "connect", _pragmas)
        # pysqlite would run DDL outside any transaction: BEGIN ourselves, so that a migration killed
        # halfway leaves the database as it was (SQLAlchemy's recipe for transactional SQLite).
        event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        event.listen(self.engine, "handle_error", self._storage_error)
        migrate(self.engine, self.dir)

    def _storage_error(self, context: Any) -> None:
        """A full or read-only disk is a clear run-level error, not a driver traceback."""
        err = context.original_exception
        text_ = str(err)
        if isinstance(err, sqlite3.OperationalError) and any(
            s in text_ for s in ("database or disk is full", "disk I/O error", "readonly database", "unable to open database file")
        ):
            raise DinosearchError(
                f"cannot write to {self.db_path} ({text_}): is its disk full or read-only? Free some space "
                "(or fix its permissions) and run again; everything committed before is kept"
            ) from err

    def close(self) -> None:
        self.engine.dispose()

    # settings -----------------------------------------------------------------------------------
    def get_setting(self, key: str) -> Any:
        with self.engine.connect() as conn:
            value = conn.execute(select(settings.c.value).where(settings.c.key == key)).scalar()
        return None if value is None else json.loads(value)

    def set_settings(self, values: dict[str, Any], conn: Any = None) -> None:
        def write(c: Any) -> None:
            for key, value in values.items():
                c.execute(delete(settings).where(settings.c.key == key))
                c.execute(insert(settings).values(key=key, value=json.dumps(value)))

        if conn is not None:
            write(conn)
        else:
            with self.engine.begin() as c:
                write(c)

    def version(self) -> int:
        """Bumped by every write: a FAISS file built at another version is stale."""
        return int(self.get_setting(VERSION_KEY) or 0)

    # reads --------------------------------------------------------------------------------------
    def known_under(self, roots: Iterable[str]) -> dict[str, Known]:
        """Every indexed path at or below the roots -> what is known of it."""
        out: dict[str, Known] = {}
        cols = (images.c.path, images.c.id, images.c.size, images.c.mtime_ns, images.c.content_hash)
        with self.engine.connect() as conn:
            for root in roots:
                lo, hi = prefix_range(root)
                q = select(*cols).where(((images.c.path >= lo) & (images.c.path < hi)) | (images.c.path == path_key(root)))
                for key, id_, size, mtime, h in conn.execute(q):
                    out[path_of(key)] = Known(id_, size, mtime, h)
        return out

    def failures_under(self, roots: Iterable[str]) -> dict[str, tuple[int, int, str]]:
        """Every failed path at or below the roots -> (size, mtime_ns, error) when it failed."""
        out: dict[str, tuple[int, int, str]] = {}
        with self.engine.connect() as conn:
            for root in roots:
                lo, hi = prefix_range(root)
                q = select(failures.c.path, failures.c.size, failures.c.mtime_ns, failures.c.error).where(
                    ((failures.c.path >= lo) & (failures.c.path < hi)) | (failures.c.path == path_key(root))
                )
                for key, size, mtime, error in conn.execute(q):
                    out[path_of(key)] = (size, mtime, error)
        return out

    def vector_for_hash(self, content_hash: str) -> bytes | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(images.c.vector).where(images.c.content_hash == content_hash).limit(1)
            ).scalar()

    def lookup_path(self, path: str) -> tuple[Known, np.ndarray] | None:
        cols = (images.c.id, images.c.size, images.c.mtime_ns, images.c.content_hash, images.c.vector)
        with self.engine.connect() as conn:
            row = conn.execute(select(*cols).where(images.c.path == path_key(path))).first()
        if row is None:
            return None
        return Known(row[0], row[1], row[2], row[3]), vector_from(row[4])

    def file_of(self, image_id: int) -> dict[str, Any] | None:
        """What the catalogue knows of one image's file: path, size, mtime_ns, content_hash, format."""
        cols = (images.c.path, images.c.size, images.c.mtime_ns, images.c.content_hash, images.c.format)
        with self.engine.connect() as conn:
            row = conn.execute(select(*cols).where(images.c.id == image_id)).first()
        if row is None:
            return None
        return {"path": path_of(row[0]), "size": row[1], "mtime_ns": row[2], "content_hash": row[3], "format": row[4]}

    def vector_of(self, image_id: int) -> np.ndarray | None:
        with self.engine.connect() as conn:
            blob = conn.execute(select(images.c.vector).where(images.c.id == image_id)).scalar()
        return None if blob is None else vector_from(blob)

    def rows_by_id(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """id -> {path, metadata, width, height, format} for the ids that exist."""
        ids = [int(i) for i in ids]
        out: dict[int, dict[str, Any]] = {}
        cols = (images.c.id, images.c.path, images.c.meta_json, images.c.width, images.c.height, images.c.format)
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                for id_, key, meta, w, h, fmt in conn.execute(select(*cols).where(images.c.id.in_(ids[start : start + 500]))):
                    out[id_] = {
                        "path": path_of(key),
                        "metadata": json.loads(meta) if meta else None,
                        "width": w,
                        "height": h,
                        "format": fmt,
                    }
        return out

    def iter_vectors(self, chunk: int = 50_000, *, after: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All (ids (n,) int64, vectors (n, dim) float32) with id > `after`, in id order, chunk by chunk."""
        last = after
        with self.engine.connect() as conn:
            while True:
                rows = conn.execute(
                    select(images.c.id, images.c.vector).where(images.c.id > last).order_by(images.c.id).limit(chunk)
                ).all()
                if not rows:
                    return
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
                yield ids, vecs.astype(np.float32)
                last = int(ids[-1])

    def all_ids(self) -> np.ndarray:
        with self.engine.connect() as conn:
            return np.fromiter(
                (r[0] for r in conn.execute(select(images.c.id).order_by(images.c.id))), dtype=np.int64
            )

    def count_images(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(images)).scalar() or 0)

    def count_failures(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(failures)).scalar() or 0)

    def list_failures(self) -> list[Failure]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(failures.c.path, failures.c.error, failures.c.message).order_by(failures.c.path))
            return [Failure(path_of(p), e, m) for p, e, m in rows]

    # writes -------------------------------------------------------------------------------------
    def write(
        self,
        rows: list[ImageRow],
        failed: list[FailureRow],
        *,
        clear_failures: Iterable[str] = (),
    ) -> list[int]:
        """One transaction: insert or update image rows, record failures, clear old failures.

        Returns the id of each row, in order.
        """
        now = time.time()
        ids: list[int] = []
        with self.engine.begin() as conn:
            done = [path_key(r.path) for r in rows] + [path_key(p) for p in clear_failures]
            for start in range(0, len(done), 500):
                conn.execute(delete(failures).where(failures.c.path.in_(done[start : start + 500])))
            for r in rows:
                values = dict(
                    path=path_key(r.path),
                    root=path_key(r.root),
                    size=r.size,
                    mtime_ns=r.mtime_ns,
                    content_hash=r.content_hash,
                    width=r.width,
                    height=r.height,
                    format=r.format,
                    vector=r.vector,
                    indexed_at=now,
                )
                if r.meta is not None:
                    values["meta_json"] = json.dumps(r.meta, ensure_ascii=False)
                if r.id is not None:
                    conn.execute(update(images).where(images.c.id == r.id).values(**values))
                    ids.append(r.id)
                else:
                    ids.append(int(conn.execute(insert(images).values(**values)).inserted_primary_key[0]))
            if failed:
                keys = [path_key(f.path) for f in failed]
                for start in range(0, len(keys), 500):
                    conn.execute(delete(failures).where(failures.c.path.in_(keys[start : start + 500])))
                    conn.execute(delete(images).where(images.c.path.in_(keys[start : start + 500])))
                conn.execute(
                    insert(failures),
                    [
                        dict(
                            path=path_key(f.path),
                            root=path_key(f.root),
                            size=f.size,
                            mtime_ns=f.mtime_ns,
                            error=f.error,
                            message=f.message,
                            failed_at=now,
                        )
                        for f in failed
                    ],
                )
            _bump(conn)
        return ids

    def remove(self, paths: Iterable[str], failed_paths: Iterable[str] = ()) -> int:
        """Delete image rows and failures of files gone from disk; returns the image rows deleted."""
        keys = [path_key(p) for p in paths]
        fkeys = [path_key(p) for p in failed_paths]
        removed = 0
        with self.engine.begin() as conn:
            for start in range(0, len(keys), 500):
                removed += conn.execute(delete(images).where(images.c.path.in_(keys[start : start + 500]))).rowcount
            for start in range(0, len(fkeys), 500):
                conn.execute(delete(failures).where(failures.c.path.in_(fkeys[start : start + 500])))
            _bump(conn)
        return removed

    def set_metadata(self, meta_by_path: dict[str, dict[str, Any]]) -> int:
        """Attach catalogue metadata to indexed paths; returns how many rows were updated.

        No version bump: metadata is read from SQLite at query time and never goes into FAISS.
        """
        n = 0
        with self.engine.begin() as conn:
            for path, meta in meta_by_path.items():
                n += conn.execute(
                    update(images)
                    .where(images.c.path == path_key(path))
                    .values(meta_json=json.dumps(meta, ensure_ascii=False))
                ).rowcount
        return n

    def ids_matching(self, where: dict[str, str]) -> np.ndarray:
        """Ids whose metadata has every key equal to the value (compared as text)."""
        q = select(images.c.id)
        for i, (key, value) in enumerate(where.items()):
            jpath = '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
            q = q.where(
                cast(func.json_extract(images.c.meta_json, bindparam(f"k{i}", jpath)), Text) == bindparam(f"v{i}", value)
            )
        with self.engine.connect() as conn:
            return np.fromiter((r[0] for r in conn.execute(q)), dtype=np.int64)

    def disk_bytes(self) -> int:
        return disk_bytes(self.dir)

    # duplicates ---------------------------------------------------------------------------------
    def facts_by_id(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """id -> {path, root, width, height, size, mtime_ns} for the ids that exist (what keeper rules compare)."""
        ids = [int(i) for i in ids]
        out: dict[int, dict[str, Any]] = {}
        cols = (images.c.id, images.c.path, images.c.root, images.c.width, images.c.height, images.c.size, images.c.mtime_ns)
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                for id_, key, root, w, h, size, mtime in conn.execute(select(*cols).where(images.c.id.in_(ids[start : start + 500]))):
                    out[id_] = {"path": path_of(key), "root": path_of(root), "width": w, "height": h, "size": size, "mtime_ns": mtime}
        return out

    def same_hash_ids(self) -> list[list[int]]:
        """Ids of the images that share a content hash with another, one list (ascending ids) per hash."""
        shared = select(images.c.content_hash).group_by(images.c.content_hash).having(func.count() > 1)
        q = select(images.c.content_hash, images.c.id).where(images.c.content_hash.in_(shared))
        groups: dict[str, list[int]] = {}
        with self.engine.connect() as conn:
            for h, id_ in conn.execute(q.order_by(images.c.content_hash, images.c.id)):
                groups.setdefault(h, []).append(int(id_))
        return list(groups.values())

    def roots(self) -> list[str]:
        """The distinct roots (indexed PATHs) of the images in the catalogue."""
        with self.engine.connect() as conn:
            return [path_of(r[0]) for r in conn.execute(select(images.c.root).distinct())]


def _bump(conn: Any) -> None:
    updated = conn.execute(
        update(settings).where(settings.c.key == VERSION_KEY).values(value=cast(cast(settings.c.value, Integer) + 1, Text))
    ).rowcount
    if not updated:
        conn.execute(insert(settings).values(key=VERSION_KEY, value="1"))


def _pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # transactions are begun by the "begin" listener
    cur = dbapi_conn.cursor()
    # WAL: readers (the server) never block the writer; NORMAL is durable at every checkpoint and
    # loses no committed transaction on a process crash.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        has = conn.execute(
            text("SELECT name FROM sqlite_master WHERE type='table' AND name='alembic_version'")
        ).scalar()
        if not has:
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine, index_dir: Path | None = None) -> None:
    """Bring the database to SCHEMA_REVISION; refuse one written by a newer dinosearch.

    Migrations run under the writer lock, so two processes opening a new index never both migrate.
    """
    rev = current_revision(engine)
    if rev == schema.SCHEMA_REVISION:
        return  # the common case costs one query and never imports Alembic
    from .migrate import known_revisions, upgrade

    if rev is not None and rev not in known_revisions():
        raise SchemaTooNewError(
            f"this index was written by a newer dinosearch (schema {rev}); upgrade dinosearch to open it"
        )
    with WriterLock(index_dir) if index_dir is not None else nullcontext():
        if current_revision(engine) != schema.SCHEMA_REVISION:
            upgrade(engine)
