"""Alembic environment: always run by dinosearch on the catalogue's own connection."""

from alembic import context

from dinosearch.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the alembic CLI is not how dinosearch migrates
    raise RuntimeError("dinosearch migrations run on open; use dinosearch, not the alembic command")

# render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table instead.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
