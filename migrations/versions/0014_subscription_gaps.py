"""Gaps and epochs of subscriptions, handled once: ``subscription_gaps`` (each gap in a subscription's event
numbers as the gap pass first saw it in ``subscription_ledger``, and each epoch reset, with what became of
it) and ``subscription_gap_watch`` (what the last pass saw of each subscription).

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0014"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "subscription_gaps",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), nullable=False),
        sa.Column("subscription", sa.Text, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),  # gap | epoch
        sa.Column("first_event", sa.BigInteger, nullable=False),
        sa.Column("last_event", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("window_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_until", sa.DateTime(timezone=True)),
        sa.Column("missed", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("recovered", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("reason", sa.String(64)),
        sa.Column("claim_token", UUID(as_uuid=False)),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("handled_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint(
            "facility_id",
            "subscription",
            "epoch",
            "kind",
            "first_event",
            "last_event",
            name="uq_subscription_gaps_range",
        ),
    )
    op.create_index(
        "ix_subscription_gaps_open",
        "subscription_gaps",
        ["facility_id"],
        postgresql_where=sa.text("handled_at IS NULL"),
    )
    op.create_table(
        "subscription_gap_watch",
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), nullable=False),
        sa.Column("subscription", sa.Text, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("highest_event", sa.BigInteger),
        sa.Column("highest_event_at", sa.DateTime(timezone=True)),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("facility_id", "subscription", name="pk_subscription_gap_watch"),
    )


def downgrade() -> None:
    op.drop_table("subscription_gap_watch")
    op.drop_index("ix_subscription_gaps_open", table_name="subscription_gaps")
    op.drop_table("subscription_gaps")
