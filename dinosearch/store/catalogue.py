"""The catalogue: every image's row and vector, failures and settings, in SQLite via SQLAlchemy Core."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, Integer, Text, bindparam, cast, delete, func, insert, intersect, select, update

from ..records import Failure
from .engine import open_engine
from .layout import DB_NAME, VERSION_KEY, disk_bytes
from .schema import failures, image_meta, images, settings

# Row records and encodings live in rows.py; re-exported here, where callers meet them.
from .rows import CHUNK, FailureRow, FrameRow, ImageRow, Known, chunks, path_key, path_of, prefix_range, vector_bytes, vector_from  # noqa: E402,F401


class Catalogue:
    def __init__(self, index_dir: Path, *, create: bool = True):
        self.dir = Path(index_dir)
        self.db_path = self.dir / DB_NAME
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = open_engine(self.db_path, self.dir)
        self._watch = _Watch(self.engine)
        # Small reads a server repeats on every request, kept until anything commits: a key -> the
        # setting's JSON text (parsed per call, so callers get their own copy); ("labelled", key) -> ids.
        self._cache: dict[Any, Any] = {}
        self._cached_at: int | None = None

    def close(self) -> None:
        self._watch.close()
        self.engine.dispose()

    def _cached(self) -> dict[Any, Any]:
        """The read cache, emptied when any connection (any process) has committed since it was filled."""
        token = self._watch.data_version()
        if token != self._cached_at:
            self._cache = {}
            self._cached_at = token
        return self._cache

    # settings -----------------------------------------------------------------------------------
    def get_setting(self, key: str) -> Any:
        cache = self._cached()
        if key in cache:
            value = cache[key]
        else:
            with self.engine.connect() as conn:
                value = conn.execute(select(settings.c.value).where(settings.c.key == key)).scalar()
            cache[key] = value
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
        cols = (images.c.path, images.c.id, images.c.size, images.c.mtime_ns, images.c.content_hash, images.c.timestamp)
        encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # path_of, inlined
        make = tuple.__new__
        with self.engine.connect() as conn:
            for root in roots:
                lo, hi = prefix_range(root)
                q = select(*cols).where(((images.c.path >= lo) & (images.c.path < hi)) | (images.c.path == path_key(root)))
                # Plain values from the DBAPI cursor: a million rows as SQLAlchemy Rows cost seconds more.
                # tuple.__new__ builds a Known in C; Known(...) runs a Python __new__ (1.6 s a million).
                for key, id_, size, mtime, h, ts in conn.execute(q).cursor:
                    out[key.decode(encoding, errors)] = make(Known, (id_, size, mtime, h, ts is not None))  # a video: any frame's row
        return out

    def failures_under(self, roots: Iterable[str]) -> dict[str, tuple[int, int, str, str]]:
        """Every failed path at or below the roots -> (size, mtime_ns, error, message) when it failed."""
        out: dict[str, tuple[int, int, str, str]] = {}
        with self.engine.connect() as conn:
            for root in roots:
                lo, hi = prefix_range(root)
                q = select(failures.c.path, failures.c.size, failures.c.mtime_ns, failures.c.error, failures.c.message).where(
                    ((failures.c.path >= lo) & (failures.c.path < hi)) | (failures.c.path == path_key(root))
                )
                for key, size, mtime, error, message in conn.execute(q):
                    out[path_of(key)] = (size, mtime, error, message)
        return out

    def vector_for_hash(self, content_hash: str) -> bytes | None:
        """The stored vector of a photo with this content (never a video frame's)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(images.c.vector)
                .where((images.c.content_hash == content_hash) & images.c.timestamp.is_(None))
                .limit(1)
            ).scalar()

    def vectors_for_hashes(self, hashes: Iterable[str]) -> dict[str, bytes]:
        """The stored vectors of photos with these contents (never video frames'): hash -> vector, for
        those found. One query per few hundred hashes, where vector_for_hash costs one per file."""
        out: dict[str, bytes] = {}
        with self.engine.connect() as conn:
            for part in chunks(sorted(set(hashes))):
                q = select(images.c.content_hash, images.c.vector).where(
                    images.c.content_hash.in_(part) & images.c.timestamp.is_(None)
                )
                for h, vector in conn.execute(q):
                    out.setdefault(h, vector)
        return out

    def frames_for_hash(self, content_hash: str) -> list[FrameRow]:
        """The stored frames of a video with this content (one file's, in time order), or []."""
        cols = (images.c.timestamp, images.c.vector, images.c.thumbnail, images.c.width, images.c.height, images.c.format)
        with self.engine.connect() as conn:
            path = conn.execute(
                select(images.c.path)
                .where((images.c.content_hash == content_hash) & images.c.timestamp.is_not(None))
                .limit(1)
            ).scalar()
            if path is None:
                return []
            rows = conn.execute(
                select(*cols).where((images.c.path == path) & images.c.timestamp.is_not(None)).order_by(images.c.timestamp)
            )
            return [FrameRow(*r) for r in rows]

    def thumbnail_of(self, image_id: int) -> bytes | None:
        """A video frame's stored JPEG; None for a photo or an unknown id."""
        with self.engine.connect() as conn:
            return conn.execute(select(images.c.thumbnail).where(images.c.id == image_id)).scalar()

    def lookup_path(self, path: str) -> tuple[Known, np.ndarray] | None:
        cols = (images.c.id, images.c.size, images.c.mtime_ns, images.c.content_hash, images.c.vector)
        with self.engine.connect() as conn:
            row = conn.execute(select(*cols).where(images.c.path == path_key(path))).first()
        if row is None:
            return None
        return Known(row[0], row[1], row[2], row[3]), vector_from(row[4])

    def file_of(self, image_id: int) -> dict[str, Any] | None:
        """What the catalogue knows of one image's file: path, size, mtime_ns, content_hash, format, timestamp
        (seconds into the video for a frame, else None)."""
        cols = (images.c.path, images.c.size, images.c.mtime_ns, images.c.content_hash, images.c.format, images.c.timestamp)
        with self.engine.connect() as conn:
            row = conn.execute(select(*cols).where(images.c.id == image_id)).first()
        if row is None:
            return None
        return {"path": path_of(row[0]), "size": row[1], "mtime_ns": row[2], "content_hash": row[3], "format": row[4],
                "timestamp": row[5]}

    def _by_ids(self, columns: str, ids: Sequence[int]) -> list[tuple[Any, ...]]:
        """Plain rows of `columns` (of `images`, as SQL) for the ids that exist, in no order.

        For the reads a search repeats on every query (a query id's vector, the re-rank's candidates,
        the hits' rows): a pooled DBAPI connection, with no SQLAlchemy Connection around it, whose
        BEGIN/ROLLBACK pair, statement cache and Row objects took three times SQLite's own time here
        (0.6 of 0.8 ms for 42 vectors at 1M rows). A single SELECT reads one consistent snapshot by
        itself: no transaction is needed.
        """
        rows: list[tuple[Any, ...]] = []
        conn = self.engine.raw_connection()
        try:
            db = conn.driver_connection
            for part in chunks(ids):
                rows += db.execute(f"SELECT {columns} FROM images WHERE id IN ({','.join('?' * len(part))})", part).fetchall()
        finally:
            conn.close()
        return rows

    def vector_of(self, image_id: int) -> np.ndarray | None:
        rows = self._by_ids("vector", [int(image_id)])
        return vector_from(rows[0][0]) if rows else None

    def rows_by_id(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """id -> {path, metadata, width, height, format, timestamp} for the ids that exist."""
        out: dict[int, dict[str, Any]] = {}
        for id_, key, meta, w, h, fmt, ts in self._by_ids("id, path, meta_json, width, height, format, timestamp",
                                                          [int(i) for i in ids]):
            out[id_] = {
                "path": path_of(key),
                "metadata": json.loads(meta) if meta else None,
                "width": w,
                "height": h,
                "format": fmt,
                "timestamp": ts,
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

    def vectors_by_id(self, ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int64, vectors (n, dim) float32) of the given ids that exist, in id order."""
        found = sorted(self._by_ids("id, vector", list({int(i) for i in ids})))  # every IVF search's re-rank reads here
        out = np.fromiter((r[0] for r in found), dtype=np.int64, count=len(found))
        if not found:
            return out, np.zeros((0, 0), np.float32)
        return out, np.frombuffer(b"".join(r[1] for r in found), dtype="<f4").reshape(len(found), -1).astype(np.float32)

    def id_summary(self) -> tuple[int, int, int]:
        """(count, min, max) of the image ids (0s when empty). Three queries SQLite answers without a
        scan (its count(*) path, the rowid B-tree's two ends); a sum of the ids took 0.35 s at 1M rows,
        paid by every process that opens the vector index."""
        with self.engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(images)).scalar()
            low = conn.execute(select(func.min(images.c.id))).scalar()
            high = conn.execute(select(func.max(images.c.id))).scalar()
        return int(count or 0), int(low or 0), int(high or 0)

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
        replace_paths: Iterable[str] = (),
    ) -> list[int]:
        """One transaction: delete every row of `replace_paths` (a video's frames, replaced by `rows`),
        insert or update image rows, record failures, clear old failures.

        Returns the id of each row, in order.
        """
        now = time.time()
        with self.engine.begin() as conn:
            for part in chunks([path_key(p) for p in replace_paths]):
                conn.execute(delete(images).where(images.c.path.in_(part)))
            done = [path_key(r.path) for r in rows] + [path_key(p) for p in clear_failures]
            for part in chunks(done):
                conn.execute(delete(failures).where(failures.c.path.in_(part)))
            inserts: list[tuple[int, dict[str, Any]]] = []  # (position in rows, values)
            ids = [0] * len(rows)
            for pos, r in enumerate(rows):
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
                    timestamp=r.timestamp,
                    thumbnail=r.thumbnail,
                    meta_json=None if r.meta is None else json.dumps(r.meta, ensure_ascii=False),
                )
                if r.id is not None:
                    if r.meta is None:  # new content under an old id: its metadata stays
                        del values["meta_json"]
                    conn.execute(update(images).where(images.c.id == r.id).values(**values))
                    ids[pos] = r.id
                else:
                    inserts.append((pos, values))
            if inserts:
                # One executemany, which SQLAlchemy sends as multi-row INSERT ... RETURNING: a statement
                # per row was most of the indexing process's own time per image with a fast model.
                stmt = insert(images).returning(images.c.id, sort_by_parameter_order=True)
                new_ids = conn.execute(stmt, [values for _, values in inserts]).scalars().all()
                for (pos, _), new_id in zip(inserts, new_ids, strict=True):
                    ids[pos] = int(new_id)
            if failed:
                keys = [path_key(f.path) for f in failed]
                for part in chunks(keys):
                    conn.execute(delete(failures).where(failures.c.path.in_(part)))
                    conn.execute(delete(images).where(images.c.path.in_(part)))
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
        """Delete image rows and failures of files gone from disk; returns the files (a photo, or a video
        with all its frames) whose rows were deleted."""
        keys = [path_key(p) for p in paths]
        fkeys = [path_key(p) for p in failed_paths]
        removed = 0
        with self.engine.begin() as conn:
            for part in chunks(keys):
                removed += int(conn.execute(
                    select(func.count(func.distinct(images.c.path))).where(images.c.path.in_(part))
                ).scalar() or 0)
                conn.execute(delete(images).where(images.c.path.in_(part)))
            for part in chunks(fkeys):
                conn.execute(delete(failures).where(failures.c.path.in_(part)))
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
        """Ids whose metadata has every key equal to the value (compared as text), (n,) int64: one lookup
        in the key/value index per filter."""
        parts = [
            select(image_meta.c.image_id).where(
                (image_meta.c.key == bindparam(f"k{i}", key)) & (image_meta.c.value == bindparam(f"v{i}", value))
            )
            for i, (key, value) in enumerate(where.items())
        ]
        q = parts[0] if len(parts) == 1 else intersect(*parts)
        with self.engine.connect() as conn:
            return np.fromiter((r[0] for r in conn.execute(q)), dtype=np.int64)

    def has_metadata_key(self, key: str) -> bool:
        """Whether any image's metadata has this key (a filter on another key can match nothing)."""
        q = select(image_meta.c.image_id).where(image_meta.c.key == bindparam("k", key)).limit(1)
        with self.engine.connect() as conn:
            return conn.execute(q).first() is not None

    def disk_bytes(self) -> int:
        return disk_bytes(self.dir)

    def set_default_metadata(self, defaults_by_path: dict[str, dict[str, Any]]) -> int:
        """Add keys to indexed paths' metadata where they have no value yet (existing keys win).

        Returns how many rows were updated. No version bump, as for set_metadata.
        """
        n = 0
        with self.engine.begin() as conn:
            for path, defaults in defaults_by_path.items():
                patch = bindparam("defaults", json.dumps(defaults, ensure_ascii=False))
                merged = func.json_patch(patch, func.coalesce(images.c.meta_json, "{}"))
                n += conn.execute(
                    update(images).where(images.c.path == path_key(path)).values(meta_json=merged)
                ).rowcount
        return n

    def labelled_ids(self, key: str) -> np.ndarray:
        """`labelled(key)`'s ids alone, (n,) int64, cached until the next commit: a server's label vote
        asks on every request, and at 1M labelled images the read takes seconds."""
        cache = self._cached()
        if ("labelled", key) not in cache:
            q = select(image_meta.c.image_id).where(_has_value(key))  # the covering index answers it; sorted
            # here, which is faster than ORDER BY (0.6 s vs 0.9 s at 1M)
            with self.engine.connect() as conn:
                # Integers straight from the DBAPI cursor: SQLAlchemy's row objects cost 3x the query here.
                ids = np.fromiter((r[0] for r in conn.execute(q).cursor), dtype=np.int64)
            cache["labelled", key] = np.sort(ids)
        return cache["labelled", key]

    def labelled(self, key: str) -> tuple[np.ndarray, list[str]]:
        """Ids (n,) int64 in id order whose metadata has a non-empty `key`, and each one's value as text."""
        q = select(image_meta.c.image_id, image_meta.c.value).where(_has_value(key)).order_by(image_meta.c.image_id)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)), [r[1] for r in rows]

    def snapshot(self, chunk: int = 10_000) -> Iterator[Any]:
        """Every image in id order, from one consistent read: first the row count (int), then chunks
        of (ids (n,) int64, paths [str], metadata [dict | None], vectors (n, dim) float32)."""
        cols = (images.c.id, images.c.path, images.c.meta_json, images.c.vector)
        with self.engine.begin() as conn:  # one transaction: the count and the rows agree
            yield int(conn.execute(select(func.count()).select_from(images)).scalar() or 0)
            last = 0
            while True:
                rows = conn.execute(select(*cols).where(images.c.id > last).order_by(images.c.id).limit(chunk)).all()
                if not rows:
                    return
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                vecs = np.frombuffer(b"".join(r[3] for r in rows), dtype="<f4").reshape(len(rows), -1)
                yield ids, [path_of(r[1]) for r in rows], [json.loads(r[2]) if r[2] else None for r in rows], vecs
                last = int(ids[-1])

    # duplicates ---------------------------------------------------------------------------------
    def facts_by_id(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """id -> {path, root, width, height, size, mtime_ns} for the ids that exist (what keeper rules compare)."""
        ids = [int(i) for i in ids]
        out: dict[int, dict[str, Any]] = {}
        cols = (images.c.id, images.c.path, images.c.root, images.c.width, images.c.height, images.c.size, images.c.mtime_ns)
        with self.engine.connect() as conn:
            for part in chunks(ids):
                for id_, key, root, w, h, size, mtime in conn.execute(select(*cols).where(images.c.id.in_(part))):
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


def _has_value(key: str) -> Any:
    """image_meta rows of `key` with a non-empty value (what `labelled` and `labelled_ids` read)."""
    value = image_meta.c.value
    return (image_meta.c.key == bindparam("k", key)) & value.is_not(None) & (value != "")


class _Watch:
    """Whether anything was committed to the database since the last look, for a few microseconds:
    SQLite's `PRAGMA data_version` on a connection of its own, which never writes, changes whenever
    another connection (in this process or any other) commits. https://sqlite.org/pragma.html#pragma_data_version
    """

    def __init__(self, engine: Engine):
        self._engine = engine
        self._conn: Any = None  # a pooled DBAPI connection kept out of the pool, opened on first use
        self._lock = threading.Lock()

    def data_version(self) -> int:
        with self._lock:
            if self._conn is None:
                self._conn = self._engine.raw_connection()
            return int(self._conn.driver_connection.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _bump(conn: Any) -> None:
    updated = conn.execute(
        update(settings).where(settings.c.key == VERSION_KEY).values(value=cast(cast(settings.c.value, Integer) + 1, Text))
    ).rowcount
    if not updated:
        conn.execute(insert(settings).values(key=VERSION_KEY, value="1"))
