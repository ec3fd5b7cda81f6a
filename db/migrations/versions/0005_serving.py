"""ONNX Runtime serving: model_versions.serving (backend, precision, the int8 agreement check)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 16:00:00

Versions from before this revision get their ONNX artifacts built by the first CPU worker that
serves them; until then the column is NULL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("serving", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("serving")
