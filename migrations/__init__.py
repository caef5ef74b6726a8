"""Alembic migrations of the catalogue schema (installed as dinosearch.migrations)."""
