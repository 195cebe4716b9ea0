"""Workers: facility limits and MRN system, token_events, change feed (trigger, pg_notify), normalized.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "facilities", sa.Column("limits", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False)
    )
    op.add_column("facilities", sa.Column("mrn_system", sa.Text()))
    op.add_column("resources", sa.Column("normalized", JSONB()))
    op.add_column("resources", sa.Column("issues", JSONB()))

    op.create_table(
        "token_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("facility_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("expires_in", sa.Integer()),
        sa.Column("detail", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="pk_token_events"),
    )
    op.create_index("ix_token_events_facility_at", "token_events", ["facility_id", "at"])

    op.create_table(
        "change_feed",
        sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("facility_id", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(128), nullable=False),
        sa.Column("version_id", sa.String(128)),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("changed_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_change_feed"),
    )
    op.create_index("ix_change_feed_facility_seq", "change_feed", ["facility_id", "seq"])
    # A trigger, so every path that changes a current resource (webhook, backfill, replay) feeds it in
    # the same transaction. The notification carries ids only, never a body.
    op.execute(
        """
        CREATE FUNCTION record_resource_change() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
          new_seq bigint;
        BEGIN
          INSERT INTO change_feed (facility_id, resource_type, resource_id, version_id, deleted)
          VALUES (NEW.facility_id, NEW.resource_type, NEW.resource_id, NEW.version_id, NEW.deleted)
          RETURNING seq INTO new_seq;
          PERFORM pg_notify('ehr_ingest_changes', json_build_object(
            'seq', new_seq, 'facility_id', NEW.facility_id, 'resource_type', NEW.resource_type,
            'resource_id', NEW.resource_id, 'deleted', NEW.deleted)::text);
          RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER resources_change_feed AFTER INSERT OR UPDATE ON resources
        FOR EACH ROW EXECUTE FUNCTION record_resource_change()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS resources_change_feed ON resources")
    op.execute("DROP FUNCTION IF EXISTS record_resource_change()")
    op.drop_index("ix_change_feed_facility_seq", table_name="change_feed")
    op.drop_table("change_feed")
    op.drop_index("ix_token_events_facility_at", table_name="token_events")
    op.drop_table("token_events")
    op.drop_column("resources", "issues")
    op.drop_column("resources", "normalized")
    op.drop_column("facilities", "mrn_system")
    op.drop_column("facilities", "limits")
