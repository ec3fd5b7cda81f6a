"""human labels (table labels, images.human_label), the review margin, and the indexes the web
app's pages read through

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REVIEW_WHERE = "status = 'done' AND human_label IS NULL"
BACKFILL_BATCH = 5000


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("margin", sa.Float(), nullable=True))
        batch.add_column(sa.Column("human_label", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("labeled_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("reviewer", sa.String(length=255), nullable=True),
        sa.Column("model_label", sa.String(length=255), nullable=True),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("file", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_labels_image_id", "labels", ["image_id"])
    op.create_index("ix_labels_created", "labels", ["created_at"])
    _backfill_margins()
    op.create_index("ix_images_status_id", "images", ["status", "id"])
    op.create_index("ix_images_confidence_id", "images", ["confidence", "id"])
    op.create_index(
        "ix_images_effective_label_id", "images", [sa.text("coalesce(human_label, label)"), "id"]
    )
    op.create_index(
        "ix_images_effective_label_confidence",
        "images",
        [sa.text("coalesce(human_label, label)"), "confidence", "id"],
    )
    op.create_index(
        "ix_images_review",
        "images",
        ["margin", "id"],
        sqlite_where=sa.text(REVIEW_WHERE),
        postgresql_where=sa.text(REVIEW_WHERE),
    )
    op.create_index("ix_images_failed_kind", "images", ["status", "error_kind", "id"])


def _margin(topk: Any) -> float | None:
    if isinstance(topk, str):
        topk = json.loads(topk)
    if not topk:
        return None
    first = float(topk[0]["confidence"])
    return first - float(topk[1]["confidence"]) if len(topk) > 1 else first


def _backfill_margins() -> None:
    """Rows classified before this revision: the margin from their stored top-k."""
    bind = op.get_bind()
    images = sa.table(
        "images", sa.column("id", sa.Integer), sa.column("topk", sa.JSON), sa.column("margin")
    )
    last = 0
    while True:
        rows = bind.execute(
            sa.select(images.c.id, images.c.topk)
            .where(images.c.id > last, images.c.topk.is_not(None))
            .order_by(images.c.id)
            .limit(BACKFILL_BATCH)
        ).all()
        if not rows:
            return
        bind.execute(
            images.update()
            .where(images.c.id == sa.bindparam("image_id"))
            .values(margin=sa.bindparam("new_margin")),
            [{"image_id": i, "new_margin": _margin(topk)} for i, topk in rows],
        )
        last = rows[-1][0]


def downgrade() -> None:
    for name in (
        "ix_images_failed_kind",
        "ix_images_review",
        "ix_images_effective_label_confidence",
        "ix_images_effective_label_id",
        "ix_images_confidence_id",
        "ix_images_status_id",
    ):
        op.drop_index(name, table_name="images")
    op.drop_index("ix_labels_created", table_name="labels")
    op.drop_index("ix_labels_image_id", table_name="labels")
    op.drop_table("labels")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("labeled_at")
        batch.drop_column("human_label")
        batch.drop_column("margin")
