"""Receiver: per-subscription event ledger, quarantine, identifier-only focus on inbox rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("inbox", sa.Column("focus_identifier", sa.Text()))
    op.create_table(
        "subscription_ledger",
        sa.Column("facility_id", sa.String(64), nullable=False),
        # Subscription/id as the notifications name it; "" for shapes that name none (legacy R4).
        sa.Column("subscription", sa.Text(), nullable=False),
        sa.Column("epoch", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("highest_event", sa.BigInteger()),
        sa.Column("highest_event_at", TS),
        sa.Column("epoch_started_at", TS),
        sa.Column("events_since_start", sa.BigInteger()),
        sa.Column("gaps_observed", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("missing", JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.Column("last_status", sa.String(16)),
        sa.Column("notifications", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_notification_at", TS),
        sa.Column("last_heartbeat_at", TS),
        sa.Column("last_handshake_at", TS),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("facility_id", "subscription", name="pk_subscription_ledger"),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name="fk_subscription_ledger_facility_id_facilities"
        ),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("facility_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("content_type", sa.String(128)),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("body", JSONB(), nullable=False),
        sa.Column("deliveries", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("received_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("last_received_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name="fk_quarantine_facility_id_facilities"
        ),
        sa.UniqueConstraint("facility_id", "body_sha256", name="uq_quarantine_facility_id_body_sha256"),
    )


def downgrade() -> None:
    op.drop_table("quarantine")
    op.drop_table("subscription_ledger")
    op.drop_column("inbox", "focus_identifier")
