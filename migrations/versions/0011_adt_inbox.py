"""HL7 v2 ADT over MLLP: an inbox of its own, its quarantine, the facility's ``hl7v2`` block, and the
``adt_events`` consumer view.

A table of its own rather than the webhook inbox with a kind column: an ADT message is not a FHIR focus
(it names a patient by MRN, carries the fields consumers read in ``adt_events``, and is deduplicated on
MSH-10 per facility), its rows are claimed per patient rather than per resource, and a listener under
load never contends with the webhook receiver's group commits on one table's indexes.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)

ADT_EVENTS_VIEW = """
CREATE VIEW adt_events AS
SELECT facility_id, event_type, message_time, control_id, mrn, visit_number, patient_class, location,
       admit_time, discharge_time, patient_id, message_type, version, prior_mrn, merged_patient_id,
       received_at, status
FROM adt_inbox
"""


def upgrade() -> None:
    op.add_column(
        "facilities", sa.Column("hl7v2", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False)
    )
    op.create_table(
        "adt_inbox",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), nullable=False),
        sa.Column("control_id", sa.Text(), nullable=False),
        sa.Column("received_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("version", sa.String(16)),
        sa.Column("message_type", sa.String(16)),
        sa.Column("event_type", sa.String(16)),
        sa.Column("message_time", TZ),
        sa.Column("mrn", sa.Text()),
        sa.Column("prior_mrn", sa.Text()),
        sa.Column("visit_number", sa.Text()),
        sa.Column("patient_class", sa.Text()),
        sa.Column("location", sa.Text()),
        sa.Column("admit_time", TZ),
        sa.Column("discharge_time", TZ),
        sa.Column("patient_id", sa.String(128)),
        sa.Column("merged_patient_id", sa.String(128)),
        sa.Column("status", sa.String(16), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lease_until", TZ),
        sa.Column("next_attempt_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("claim_token", UUID(as_uuid=False)),
        sa.Column("reason", sa.String(64)),
        sa.Column("detail", sa.Text()),
        sa.Column("done_at", TZ),
        sa.PrimaryKeyConstraint("id", name="pk_adt_inbox"),
        sa.UniqueConstraint("facility_id", "control_id", name="uq_adt_inbox_facility_id_control_id"),
    )
    op.create_index(
        "ix_adt_inbox_claimable",
        "adt_inbox",
        ["facility_id", "next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index("ix_adt_inbox_patient", "adt_inbox", ["facility_id", "mrn"])
    op.create_table(
        "adt_quarantine",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("facility_id", sa.String(64)),
        sa.Column("peer", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("raw_sha256", sa.String(64), nullable=False),
        sa.Column("raw", BYTEA(), nullable=False),
        sa.Column("deliveries", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("received_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("last_received_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_adt_quarantine"),
        sa.UniqueConstraint("raw_sha256", name="uq_adt_quarantine_raw_sha256"),
    )
    op.execute(ADT_EVENTS_VIEW)
    op.execute(
        "COMMENT ON VIEW adt_events IS 'One row per distinct HL7 v2 ADT message; see README, For consumers.'"
    )


def downgrade() -> None:
    op.execute("DROP VIEW adt_events")
    op.drop_table("adt_quarantine")
    op.drop_index("ix_adt_inbox_patient", table_name="adt_inbox")
    op.drop_index("ix_adt_inbox_claimable", table_name="adt_inbox")
    op.drop_table("adt_inbox")
    op.drop_column("facilities", "hl7v2")
