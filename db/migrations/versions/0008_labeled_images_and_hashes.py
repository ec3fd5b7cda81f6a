"""Mistakes a person cannot see: a perceptual hash per image (images.phash), every labeled
image as a training run saw it (labeled_images: its split, hash, and how much the model doubts
its label), and a person's decisions on suspect labels (suspect_decisions)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 08:00:00

Images classified before this revision have no hash (NULL) until they are classified again
(`inbox-classifier reclassify`); they are left out of near-duplicate groups meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("phash", sa.LargeBinary(32), nullable=True))
        batch.add_column(sa.Column("dup_group", sa.Integer(), nullable=True))
    op.create_index("ix_images_dup_group_id", "images", ["dup_group", "id"])
    op.create_table(
        "labeled_images",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "run_id",
            sa.Integer(),
            sa.ForeignKey("training_runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("split", sa.String(8), nullable=False),
        sa.Column("phash", sa.LargeBinary(32), nullable=True),
        sa.Column("suggested", sa.String(255), nullable=True),
        sa.Column("given_probability", sa.Float(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
    )
    op.create_index("ix_labeled_images_run_score", "labeled_images", ["run_id", "score"])
    op.create_index("ix_labeled_images_sha256", "labeled_images", ["sha256"])
    op.create_table(
        "suspect_decisions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("new_label", sa.String(255), nullable=True),
        sa.Column("moved_from", sa.Text(), nullable=True),
        sa.Column("moved_to", sa.Text(), nullable=True),
        sa.Column("reviewer", sa.String(255), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_suspect_decisions_sha256_label", "suspect_decisions", ["sha256", "label"])


def downgrade() -> None:
    op.drop_index("ix_suspect_decisions_sha256_label", table_name="suspect_decisions")
    op.drop_table("suspect_decisions")
    op.drop_index("ix_labeled_images_sha256", table_name="labeled_images")
    op.drop_index("ix_labeled_images_run_score", table_name="labeled_images")
    op.drop_table("labeled_images")
    op.drop_index("ix_images_dup_group_id", table_name="images")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("dup_group")
        batch.drop_column("phash")
