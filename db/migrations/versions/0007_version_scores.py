"""Held-out scores: version_scores, one row per version scored by a training run; an index
on predictions.created_at (the Overview's work per minute)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 21:00:00

Each run scores its candidate and the active model on the same held-out images of labeled/;
both scores are kept so versions can be compared on one set. Versions trained before this
revision have none (the Models page says so).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "version_scores",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "model_version_id",
            sa.Integer(),
            sa.ForeignKey("model_versions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("training_runs.id"), nullable=True),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("correct", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_version_scores_model_version_id", "version_scores", ["model_version_id"])
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_predictions_created_at", table_name="predictions")
    op.drop_index("ix_version_scores_model_version_id", table_name="version_scores")
    op.drop_table("version_scores")
