"""Catalogue metadata as key/value rows with an index, so a `key=value` filter is an index lookup.

Triggers keep image_meta in step with images.meta_json whoever writes it; existing metadata is copied.
Values are stored as SQLite's text of the JSON value (what `CAST(json_extract(...) AS TEXT)` gives).

Revision ID: 0002_meta
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_meta"
down_revision = "0001"
branch_labels = None
depends_on = None

# json_each of a row's metadata object; invalid JSON or a non-object yields no rows instead of an error.
_PAIRS = (
    "json_each(CASE WHEN json_valid({m}) AND json_type({m}) = 'object' THEN {m} ELSE '{{}}' END) AS j"
)
_INSERT = "INSERT INTO image_meta (image_id, key, value) SELECT {id}, j.key, CAST(j.value AS TEXT) FROM " + _PAIRS


def upgrade() -> None:
    op.create_table(
        "image_meta",
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text()),
        sa.PrimaryKeyConstraint("image_id", "key", name="pk_image_meta"),
    )
    op.create_index("ix_image_meta_key_value", "image_meta", ["key", "value", "image_id"])
    op.execute(
        _INSERT.format(id="images.id", m="images.meta_json").replace(" FROM ", " FROM images, ", 1)
        + " WHERE images.meta_json IS NOT NULL"
    )
    op.execute(
        "CREATE TRIGGER image_meta_insert AFTER INSERT ON images WHEN NEW.meta_json IS NOT NULL BEGIN "
        + _INSERT.format(id="NEW.id", m="NEW.meta_json") + "; END"
    )
    op.execute(
        "CREATE TRIGGER image_meta_update AFTER UPDATE OF meta_json ON images BEGIN "
        "DELETE FROM image_meta WHERE image_id = OLD.id; "
        + _INSERT.format(id="NEW.id", m="NEW.meta_json") + " WHERE NEW.meta_json IS NOT NULL; END"
    )
    op.execute(
        "CREATE TRIGGER image_meta_delete AFTER DELETE ON images BEGIN "
        "DELETE FROM image_meta WHERE image_id = OLD.id; END"
    )


def downgrade() -> None:
    for trigger in ("image_meta_delete", "image_meta_update", "image_meta_insert"):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.drop_index("ix_image_meta_key_value", table_name="image_meta")
    op.drop_table("image_meta")
