"""Cancelling a training run: training_runs.cancel_requested_at

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 17:00:00

Set by ``inbox-classifier retrain --cancel RUN`` (or the API); the run's worker sees it at its
next heartbeat or epoch and ends the run as ``cancelled``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(
            sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("cancel_requested_at")
