"""calibrated confidence: model_versions.calibration, images.needs_review / sure /
review_score, and the review queue ordered by review_score

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 14:00:00

Rows classified before this revision were scored by uncalibrated versions: needs_review and
sure stay NULL, and review_score is 1 + margin (db.ledger.review_score for such a result).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REVIEW_WHERE = "status = 'done' AND human_label IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("calibration", sa.JSON(), nullable=True))
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("needs_review", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("sure", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("review_score", sa.Float(), nullable=True))
    images = sa.table("images", sa.column("margin", sa.Float), sa.column("review_score"))
    op.execute(
        images.update()
        .where(images.c.margin.is_not(None))
        .values(review_score=images.c.margin + 1.0)
    )
    op.drop_index("ix_images_review", table_name="images")
    op.create_index(
        "ix_images_review",
        "images",
        ["review_score", "id"],
        sqlite_where=sa.text(REVIEW_WHERE),
        postgresql_where=sa.text(REVIEW_WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_images_review", table_name="images")
    op.create_index(
        "ix_images_review",
        "images",
        ["margin", "id"],
        sqlite_where=sa.text(REVIEW_WHERE),
        postgresql_where=sa.text(REVIEW_WHERE),
    )
    with op.batch_alter_table("images") as batch:
        batch.drop_column("review_score")
        batch.drop_column("sure")
        batch.drop_column("needs_review")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("calibration")
