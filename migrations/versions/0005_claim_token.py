"""Inbox claim tokens: outcomes are recorded only by the worker that holds the current claim.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("inbox", sa.Column("claim_token", UUID(as_uuid=False)))


def downgrade() -> None:
    op.drop_column("inbox", "claim_token")
