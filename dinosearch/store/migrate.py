"""Alembic, run in-process on the catalogue's own engine."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine


def _location() -> Path:
    """The installed `dinosearch.migrations` package, or migrations/ of a source checkout on sys.path."""
    try:
        return Path(str(resources.files("dinosearch.migrations")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "migrations"


def _config() -> Config:
    location = _location()
    cfg = Config()
    cfg.set_main_option("script_location", str(location))
    return cfg


def known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}


def head() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
