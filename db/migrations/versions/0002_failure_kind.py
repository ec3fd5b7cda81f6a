"""images.error_kind: the failure kind beside its reason

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00

Rows failed before this revision get their kind from the wording the worker and the ledger
used for each kind until now; anything else becomes 'other'.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (prefix of images.error, kind), as the code worded them up to revision 0001.
LEGACY_PREFIXES = [
    ("file vanished", "vanished"),
    ("file cannot be opened", "unreadable"),
    ("file cannot be read", "unreadable"),
    ("not a regular file", "not_regular"),
    ("file changed after it was queued", "changed"),
    ("empty file", "empty"),
    ("not a recognised image format", "not_image"),
    ("unreadable image header", "not_image"),
    ("refused as a decompression bomb", "too_large"),
    ("image is ", "too_large"),  # "image is WxH = N pixels, over the ...-pixel limit"
    ("image has no pixels", "corrupt"),
    ("corrupt or truncated image", "corrupt"),
    ("decode error", "decode_error"),
    ("gave up after", "gave_up"),
    ("file replaced by new content", "orphaned"),
]


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("error_kind", sa.String(length=32), nullable=True))
    images = sa.table(
        "images",
        sa.column("error", sa.Text),
        sa.column("error_kind", sa.String),
    )
    for prefix, kind in LEGACY_PREFIXES:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        op.execute(
            images.update()
            .where(
                images.c.error_kind.is_(None),
                images.c.error.like(escaped + "%", escape="\\"),
            )
            .values(error_kind=kind)
        )
    op.execute(
        images.update()
        .where(images.c.error_kind.is_(None), images.c.error.is_not(None))
        .values(error_kind="other")
    )


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("error_kind")
