"""Video frames: one file -> many rows. images gains `timestamp` (seconds into the video, NULL for a
photo) and `thumbnail` (a frame's small JPEG); the file's path is unique with its timestamp.

Revision ID: 0003_frames
Revises: 0002_meta
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_frames"
down_revision = "0002_meta"
branch_labels = None
depends_on = None

UNIQUE_FRAME = "CREATE UNIQUE INDEX uq_images_path_timestamp ON images (path, ifnull(timestamp, -1.0))"


def _sequence() -> int | None:
    return op.get_bind().exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'images'").scalar()


def _restore_sequence(seq: int | None) -> None:
    # SQLite rebuilds the table to drop a constraint; its AUTOINCREMENT high-water mark must survive,
    # or the ids of deleted images could be handed out again.
    if seq is not None:
        op.get_bind().exec_driver_sql("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'images'", (seq,))


def _triggers() -> list[str]:
    # Rebuilding the table drops its triggers (0002_meta's keep image_meta in step): they are made again.
    return [r[0] for r in op.get_bind().exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'images'")]


def _recreate(triggers: list[str]) -> None:
    for sql in triggers:
        op.execute(sql)


def upgrade() -> None:
    seq, triggers = _sequence(), _triggers()
    with op.batch_alter_table("images", recreate="always", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint("uq_images_path", type_="unique")
        batch.add_column(sa.Column("timestamp", sa.Float()))
        batch.add_column(sa.Column("thumbnail", sa.LargeBinary()))
    op.execute(UNIQUE_FRAME)
    _recreate(triggers)
    _restore_sequence(seq)


def downgrade() -> None:
    seq, triggers = _sequence(), _triggers()
    op.execute("DROP INDEX uq_images_path_timestamp")
    op.execute("DELETE FROM images WHERE timestamp IS NOT NULL")
    with op.batch_alter_table("images", recreate="always", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("thumbnail")
        batch.drop_column("timestamp")
        batch.create_unique_constraint("uq_images_path", ["path"])
    _recreate(triggers)
    _restore_sequence(seq)
