"""The SQLite schema. Changes go through an Alembic migration in migrations/versions."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
)

from .layout import SCHEMA_REVISION  # noqa: F401  (the revision this schema is at)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Paths are stored as the file system's own bytes (os.fsencode), so names that are not UTF-8 round-trip.
# A photo is one row (timestamp NULL); a video is one row per sampled frame (timestamp in seconds).
images = Table(
    "images",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # AUTOINCREMENT: ids are never reused
    Column("path", LargeBinary, nullable=False),
    Column("root", LargeBinary, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("content_hash", String(64), nullable=False, index=True),
    Column("width", Integer),
    Column("height", Integer),
    Column("format", String(16)),
    Column("vector", LargeBinary, nullable=False),  # float32 little-endian, L2-normalised
    Column("meta_json", Text),  # catalogue metadata attached to the image, a JSON object
    Column("indexed_at", Float, nullable=False),
    Column("timestamp", Float),  # seconds into the video of this frame; NULL for a photo
    Column("thumbnail", LargeBinary),  # a video frame's small JPEG (the server never decodes videos)
    sqlite_autoincrement=True,
)
# One row per photo, one per (video, frame time): IFNULL because SQLite's UNIQUE lets NULLs repeat.
Index("uq_images_path_timestamp", images.c.path, func.ifnull(images.c.timestamp, -1.0), unique=True)
# Covers Catalogue.known_under, which a run's plan reads for every indexed path under its roots (0004).
Index("ix_images_path_stat", images.c.path, images.c.size, images.c.mtime_ns, images.c.content_hash, images.c.timestamp)

failures = Table(
    "failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("path", LargeBinary, nullable=False, unique=True),
    Column("root", LargeBinary, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("error", String(32), nullable=False),
    Column("message", Text, nullable=False),
    Column("failed_at", Float, nullable=False),
)

# Small key -> JSON value facts: the model fingerprint and the FAISS generation written last.
settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Catalogue metadata as key/value rows (kept in step with images.meta_json by triggers, see migration
# 0002_meta): a `key=value` filter is a lookup in ix_image_meta_key_value, not a scan of every row.
image_meta = Table(
    "image_meta",
    metadata,
    Column("image_id", Integer, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", Text),
    Index("ix_image_meta_key_value", "key", "value", "image_id"),
)
