"""Feed health: per-facility detector thresholds, webhook refusals per minute, the quiet checks (a
suspected quiet feed, the reconcile it asked for and what that found), and the time indexes the health
windows read.

Revision ID: 0017
Revises: 0012
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0017"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "facilities", sa.Column("feed_health", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"))
    )
    op.create_table(
        "feed_checks",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), nullable=False),
        sa.Column("source", sa.Text, nullable=False),  # subscription:{id} | adt
        sa.Column("reason", sa.String(32), nullable=False),  # heartbeat_overdue | below_expected
        sa.Column("suspected_at", sa.DateTime(timezone=True), nullable=False),
        # the source's last sign of life when it was suspected: a later one ends this silence
        sa.Column("silent_since", sa.DateTime(timezone=True)),
        sa.Column("run_id", sa.BigInteger),  # the reconcile run that answered it
        sa.Column("outcome", sa.String(16)),  # quiet | leaking; NULL while the reconcile has not run
        sa.Column("recovered", sa.Integer),
        sa.Column("decided_at", sa.DateTime(timezone=True)),
    )
    # One open check per source: two evaluators (two beats) ask for one reconcile.
    op.create_index(
        "ix_feed_checks_open",
        "feed_checks",
        ["facility_id", "source"],
        unique=True,
        postgresql_where=sa.text("outcome IS NULL"),
    )
    op.create_index("ix_feed_checks_facility_id", "feed_checks", ["facility_id", "source", "suspected_at"])
    # A known facility's deliveries refused with 401, per minute and reason (no foreign key: written in
    # batches by the receiver, a facility removed meanwhile must not fail the batch).
    op.create_table(
        "webhook_refusals",
        sa.Column("facility_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refusals", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("facility_id", "reason", "minute", name="pk_webhook_refusals"),
    )
    op.create_index("ix_webhook_refusals_minute", "webhook_refusals", ["minute"])
    # The health windows (last hour, the same hour of past weeks) are time ranges over every facility.
    op.create_index("ix_inbox_received_at", "inbox", ["received_at"])
    op.create_index("ix_adt_inbox_received_at", "adt_inbox", ["received_at"])
    op.create_index(
        "ix_reconcile_recovered_recovered_at", "reconcile_recovered", ["facility_id", "recovered_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_reconcile_recovered_recovered_at", table_name="reconcile_recovered")
    op.drop_index("ix_adt_inbox_received_at", table_name="adt_inbox")
    op.drop_index("ix_inbox_received_at", table_name="inbox")
    op.drop_index("ix_webhook_refusals_minute", table_name="webhook_refusals")
    op.drop_table("webhook_refusals")
    op.drop_index("ix_feed_checks_facility_id", table_name="feed_checks")
    op.drop_index("ix_feed_checks_open", table_name="feed_checks")
    op.drop_table("feed_checks")
    op.drop_column("facilities", "feed_health")
