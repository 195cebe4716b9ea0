"""Facility capabilities, chosen change-detection strategies, capability events, the subscriptions we
keep at each EHR, and reconcile requests (windows to search again).

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0010"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def _facility_fk() -> sa.Column[str]:
    return sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), nullable=False)


def upgrade() -> None:
    for column in ("change_detection", "subscription"):
        op.add_column(
            "facilities",
            sa.Column(column, JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False),
        )
    op.create_table(
        "facility_capabilities",
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), primary_key=True),
        sa.Column("probed_at", _TS, nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(64)),
        sa.Column("detail", sa.Text()),
        sa.Column("capabilities", JSONB),
        sa.Column("last_ok_at", _TS),
    )
    op.create_table(
        "resource_capabilities",
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), primary_key=True),
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("search_params", JSONB, nullable=False),
        sa.Column("required_params", JSONB, nullable=False),
        sa.Column("spellings", JSONB, nullable=False),
        sa.Column("history", sa.Boolean(), nullable=False),
        sa.Column("strategy", sa.String(32)),
        sa.Column("strategy_source", sa.String(32), nullable=False),
        sa.Column("strategy_reason", sa.Text(), nullable=False),
        sa.Column("probed_at", _TS, nullable=False),
    )
    op.create_table(
        "capability_events",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        _facility_fk(),
        sa.Column("capability", sa.Text(), nullable=False),
        sa.Column("change", sa.String(8), nullable=False),
        sa.Column("detected_at", _TS, nullable=False),
    )
    op.create_index("ix_capability_events_facility_at", "capability_events", ["facility_id", "detected_at"])
    op.create_table(
        "facility_subscriptions",
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), primary_key=True),
        sa.Column("subscription_id", sa.Text(), nullable=False),
        sa.Column("resource", JSONB, nullable=False),
        sa.Column("requested", JSONB, nullable=False),
        sa.Column("status", sa.String(16)),
        sa.Column("end", _TS),
        sa.Column("heartbeat_s", sa.Integer()),
        sa.Column("last_checked_at", _TS),
        sa.Column("last_error", sa.Text()),
        sa.Column("reactivations", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", _TS, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", _TS, server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "reconcile_requests",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        _facility_fk(),
        sa.Column("since", _TS, nullable=False),
        sa.Column("until", _TS),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("subscription_id", sa.Text()),
        sa.Column("requested_at", _TS, server_default=sa.func.now(), nullable=False),
        sa.Column("consumed_at", _TS),
    )
    op.create_index(
        "ix_reconcile_requests_open",
        "reconcile_requests",
        ["facility_id"],
        postgresql_where=sa.text("consumed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_table("reconcile_requests")
    op.drop_table("facility_subscriptions")
    op.drop_table("capability_events")
    op.drop_table("resource_capabilities")
    op.drop_table("facility_capabilities")
    op.drop_column("facilities", "subscription")
    op.drop_column("facilities", "change_detection")
