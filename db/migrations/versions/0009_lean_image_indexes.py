"""Fewer index entries per image write: the indexes no reader needs dropped, the failed and
near-duplicate indexes partial, room on each images page for heap-only updates (PostgreSQL)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 16:30:00

An image row is written three times (recorded, sent, classified) and, in PostgreSQL, every
write that changes an indexed column adds an entry to every index. Dropped:
``ix_images_status_enqueued`` (the reconciler's scan of queued rows is served by
``ix_images_status_id``; with enqueued_at unindexed, marking a row sent is a heap-only update),
``ix_images_label`` (no page filters on the model's label alone), ``ix_images_classified_at``
(the throughput figure counts predictions by their created_at) and
``ix_predictions_image_id`` (``uq_prediction`` starts with image_id). fillfactor 50 leaves
room beside each row for its sent version (docs/performance.md has the measurement); it
applies to pages written from now on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FAILED = sa.text("status = 'failed'")
_GROUPED = sa.text("dup_group IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_images_status_enqueued", table_name="images")
    op.drop_index("ix_images_label", table_name="images")
    op.drop_index("ix_images_classified_at", table_name="images")
    op.drop_index("ix_predictions_image_id", table_name="predictions")
    op.drop_index("ix_images_failed_kind", table_name="images")
    op.create_index(
        "ix_images_failed_kind",
        "images",
        ["error_kind", "id"],
        sqlite_where=_FAILED,
        postgresql_where=_FAILED,
    )
    op.drop_index("ix_images_dup_group_id", table_name="images")
    op.create_index(
        "ix_images_dup_group_id",
        "images",
        ["dup_group", "id"],
        sqlite_where=_GROUPED,
        postgresql_where=_GROUPED,
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE images SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE images RESET (fillfactor)")
    op.drop_index("ix_images_dup_group_id", table_name="images")
    op.create_index("ix_images_dup_group_id", "images", ["dup_group", "id"])
    op.drop_index("ix_images_failed_kind", table_name="images")
    op.create_index("ix_images_failed_kind", "images", ["status", "error_kind", "id"])
    op.create_index("ix_predictions_image_id", "predictions", ["image_id"])
    op.create_index("ix_images_classified_at", "images", ["classified_at"])
    op.create_index("ix_images_label", "images", ["label"])
    op.create_index("ix_images_status_enqueued", "images", ["status", "enqueued_at"])
