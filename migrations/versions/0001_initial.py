"""Initial ledger: facilities, inbox, resources, resource_history, view current_resources.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "facilities",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("vendor", sa.String(32), nullable=False),
        sa.Column("base_url", sa.Text(), nullable=False),
        sa.Column("auth", JSONB(), nullable=False),
        sa.Column("webhook", JSONB(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_facilities"),
    )
    op.create_table(
        "inbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("facility_id", sa.String(64), nullable=False),
        sa.Column("dedup_key", sa.Text(), nullable=False),
        sa.Column("received_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("subscription", sa.Text()),
        sa.Column("event_number", sa.BigInteger()),
        sa.Column("focus_type", sa.String(64)),
        sa.Column("focus_id", sa.String(128)),
        sa.Column("interaction", sa.String(16)),
        sa.Column("payload", JSONB()),
        sa.Column("status", sa.String(16), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lease_until", TS),
        sa.Column("next_attempt_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("reason", sa.String(64)),
        sa.Column("detail", sa.Text()),
        sa.Column("done_at", TS),
        sa.PrimaryKeyConstraint("id", name="pk_inbox"),
        sa.ForeignKeyConstraint(["facility_id"], ["facilities.id"], name="fk_inbox_facility_id_facilities"),
        sa.UniqueConstraint("facility_id", "dedup_key", name="uq_inbox_facility_id_dedup_key"),
        sa.CheckConstraint("status IN ('pending', 'done', 'dead')", name="ck_inbox_status"),
    )
    op.create_index(
        "ix_inbox_claimable",
        "inbox",
        ["facility_id", "next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_inbox_dead", "inbox", ["facility_id", "reason"], postgresql_where=sa.text("status = 'dead'")
    )
    op.create_table(
        "resources",
        sa.Column("facility_id", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(128), nullable=False),
        sa.Column("version_id", sa.String(128)),
        sa.Column("last_updated", TS),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("deleted", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("resource", JSONB()),
        sa.Column("fetched_at", TS, nullable=False),
        sa.Column("ingested_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("facility_id", "resource_type", "resource_id", name="pk_resources"),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name="fk_resources_facility_id_facilities"
        ),
    )
    op.create_table(
        "resource_history",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("facility_id", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(128), nullable=False),
        sa.Column("version_key", sa.String(160), nullable=False),
        sa.Column("version_id", sa.String(128)),
        sa.Column("last_updated", TS),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("resource", JSONB()),
        sa.Column("fetched_at", TS, nullable=False),
        sa.Column("recorded_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_resource_history"),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name="fk_resource_history_facility_id_facilities"
        ),
        sa.UniqueConstraint(
            "facility_id",
            "resource_type",
            "resource_id",
            "version_key",
            name="uq_resource_history_version",
        ),
    )
    op.execute(
        """
        CREATE VIEW current_resources AS
        SELECT facility_id, resource_type, resource_id, version_id, last_updated, deleted, resource,
               ingested_at
        FROM resources
        """
    )
    op.execute(
        "COMMENT ON VIEW current_resources IS "
        "'Consumer contract: the current version of every FHIR resource per facility. "
        "deleted = true is a tombstone (resource keeps the last known body, or NULL if none was seen). "
        "Columns are stable; new ones may be added.'"
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS current_resources")
    op.drop_table("resource_history")
    op.drop_table("resources")
    op.drop_index("ix_inbox_dead", table_name="inbox")
    op.drop_index("ix_inbox_claimable", table_name="inbox")
    op.drop_table("inbox")
    op.drop_table("facilities")
