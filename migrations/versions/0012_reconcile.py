"""The reconciler's ledger: per-facility reconcile settings, watermarks per (facility, type, strategy),
one row per run, and the changes a reconcile recovered (applied without any notification delivering them).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "facilities", sa.Column("reconcile", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"))
    )
    op.create_table(
        "reconcile_watermarks",
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("strategy", sa.String(32), nullable=False),
        # Everything the EHR changed at or before this instant (minus the overlap) is committed here.
        sa.Column("watermark", sa.DateTime(timezone=True)),
        sa.Column("recrawled_at", sa.DateTime(timezone=True)),  # the last complete re-crawl
        sa.Column("last_run_at", sa.DateTime(timezone=True)),
        sa.Column("last_outcome", sa.String(16)),  # complete | partial | failed
        sa.Column("last_reason", sa.String(64)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("facility_id", "resource_type", "strategy", name="pk_reconcile_watermarks"),
    )
    op.create_table(
        "reconcile_runs",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),  # schedule | backfill | no-focus
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("outcome", sa.String(16)),  # complete | partial | failed; NULL while running (or killed)
        sa.Column("pages", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("resources", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("applied", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("recovered", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("reasons", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.create_index("ix_reconcile_runs_facility_id", "reconcile_runs", ["facility_id", "started_at"])
    op.create_table(
        "reconcile_recovered",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(128), nullable=False),
        sa.Column("version_id", sa.String(128)),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("strategy", sa.String(32), nullable=False),
        sa.Column("run_id", sa.BigInteger),
        sa.Column("recovered_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index(
        "ix_reconcile_recovered_facility_id", "reconcile_recovered", ["facility_id", "resource_type"]
    )


def downgrade() -> None:
    op.drop_index("ix_reconcile_recovered_facility_id", table_name="reconcile_recovered")
    op.drop_table("reconcile_recovered")
    op.drop_index("ix_reconcile_runs_facility_id", table_name="reconcile_runs")
    op.drop_table("reconcile_runs")
    op.drop_table("reconcile_watermarks")
    op.drop_column("facilities", "reconcile")
