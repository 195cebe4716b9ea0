"""Alerts: one row per (facility, source, kind) incident with its history, and the outbox of sink
deliveries; per-facility sink routing on ``facilities.alerts``.

The partial unique index on (facility_id, source, kind) over the live states is the ``ON CONFLICT`` target
of an open: two processes can never hold two live alerts for one key. ``dedup_key`` is derived from the row
(``ehri:{facility}:{source}:{kind}:{id}``), so a reopen keeps it.

Revision ID: 0018
Revises: 0012
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "facilities", sa.Column("alerts", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"))
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), nullable=False),
        sa.Column("source", sa.String(160), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),  # open | acknowledged | resolved
        sa.Column(
            "dedup_key",
            sa.Text,
            sa.Computed(
                "'ehri:' || facility_id || ':' || source || ':' || kind || ':' || id", persisted=True
            ),
            nullable=False,
        ),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("opened_at", _TS, nullable=False),
        sa.Column("last_seen_at", _TS, nullable=False),
        sa.Column(
            "healthy_since", _TS
        ),  # evaluated healthy continuously since; NULL while the condition holds
        sa.Column("acknowledged_at", _TS),
        sa.Column("acknowledged_by", sa.String(64)),
        sa.Column("resolved_at", _TS),
        sa.Column("resolved_by", sa.String(64)),
        sa.Column("reopened", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("state IN ('open', 'acknowledged', 'resolved')", name="state"),
    )
    op.create_index(
        "ux_alerts_live",
        "alerts",
        ["facility_id", "source", "kind"],
        unique=True,
        postgresql_where=sa.text("state IN ('open', 'acknowledged')"),
    )
    op.create_index("ix_alerts_key_resolved", "alerts", ["facility_id", "source", "kind", "resolved_at"])
    op.create_table(
        "alert_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.BigInteger, sa.ForeignKey("alerts.id"), nullable=False),
        sa.Column(
            "event", sa.String(16), nullable=False
        ),  # opened | seen | acknowledged | resolved | reopened
        sa.Column("actor", sa.String(64), nullable=False),  # "auto" or the operator
        sa.Column("at", _TS, nullable=False),
        sa.Column("details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.create_index("ix_alert_events_alert_id", "alert_events", ["alert_id", "id"])
    op.create_table(
        "alert_deliveries",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.BigInteger, sa.ForeignKey("alerts.id"), nullable=False),
        sa.Column("sink", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),  # trigger | acknowledge | resolve
        sa.Column("state", sa.String(16), nullable=False, server_default=sa.text("'pending'")),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("last_error", sa.String(64)),  # a reason slug
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("sent_at", _TS),
        sa.CheckConstraint("state IN ('pending', 'sent', 'failed', 'cancelled')", name="state"),
    )
    # The sender's scan: only pending rows are indexed.
    op.create_index(
        "ix_alert_deliveries_due",
        "alert_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_index("ix_alert_deliveries_alert_id", "alert_deliveries", ["alert_id", "sink", "id"])


def downgrade() -> None:
    op.drop_index("ix_alert_deliveries_alert_id", table_name="alert_deliveries")
    op.drop_index("ix_alert_deliveries_due", table_name="alert_deliveries")
    op.drop_table("alert_deliveries")
    op.drop_index("ix_alert_events_alert_id", table_name="alert_events")
    op.drop_table("alert_events")
    op.drop_index("ix_alerts_key_resolved", table_name="alerts")
    op.drop_index("ux_alerts_live", table_name="alerts")
    op.drop_table("alerts")
    op.drop_column("facilities", "alerts")
