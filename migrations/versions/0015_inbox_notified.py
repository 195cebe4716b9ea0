"""What a notification announced, kept on its inbox row: the focus's version (``Type/id/_history/n``) and
the event's time. A read that answers an older version (a lagging replica) is then not the end of the
event: the row is read again after its back-off (``app.ingest.drain``, reason ``older_than_notified``).

Revision ID: 0015
Revises: 0012
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("inbox", sa.Column("notified_version", sa.String(64)))
    op.add_column("inbox", sa.Column("notified_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("inbox", "notified_at")
    op.drop_column("inbox", "notified_version")
