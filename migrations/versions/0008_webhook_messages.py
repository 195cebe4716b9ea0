"""Webhook message ids seen (Standard Webhooks ``webhook-id``): a replay inside the window is stored once.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook_messages",
        sa.Column("facility_id", sa.String(64), nullable=False),
        # sha256 of the sender's message id: fixed length, whatever the sender sends.
        sa.Column("message_sha256", sa.String(64), nullable=False),
        # The end of the message's replay window: after it the signature check refuses the message anyway.
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("received_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("facility_id", "message_sha256", name="pk_webhook_messages"),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name="fk_webhook_messages_facility_id_facilities"
        ),
    )
    op.create_index("ix_webhook_messages_expires_at", "webhook_messages", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_messages_expires_at", table_name="webhook_messages")
    op.drop_table("webhook_messages")
