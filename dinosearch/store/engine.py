"""The catalogue's SQLite engine: connection settings, clear storage errors, and migration on open."""

from __future__ import annotations

import sqlite3
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text

from ..errors import DinosearchError, SchemaTooNewError
from . import schema
from .lock import WriterLock


def open_engine(db_path: Path, index_dir: Path) -> Engine:
    """An engine on `db_path`, migrated to this code's schema. Raises SchemaTooNewError, DinosearchError."""
    engine = create_engine(f"sqlite:///{db_path}")
    event.listen(engine, "connect", _pragmas)
    # pysqlite would run DDL outside any transaction: BEGIN ourselves, so that a migration killed
    # halfway leaves the database as it was (SQLAlchemy's recipe for transactional SQLite).
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
    event.listen(engine, "handle_error", lambda context: _storage_error(context, db_path))
    migrate(engine, index_dir)
    return engine


def _storage_error(context: Any, db_path: Path) -> None:
    """A full or read-only disk is a clear run-level error, not a driver traceback."""
    err = context.original_exception
    text_ = str(err)
    if isinstance(err, sqlite3.OperationalError) and any(
        s in text_ for s in ("database or disk is full", "disk I/O error", "readonly database", "unable to open database file")
    ):
        raise DinosearchError(
            f"cannot write to {db_path} ({text_}): is its disk full or read-only? Free some space "
            "(or fix its permissions) and run again; everything committed before is kept"
        ) from err


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
