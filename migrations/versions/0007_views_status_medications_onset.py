"""Consumer views say what the EHR meant (statuses, pairing, medications, onset).

Observation and allergy statuses; blood-pressure readings paired by the one (Python) pairing rule at store
time into ``blood_pressure_pairs``; medications resolved or an unresolved reason; Condition onset of every
type. Views are replaced in place (``CREATE OR REPLACE``): existing columns keep their
names and order, new ones are appended, so consumers' own views over them keep working.

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

from app.fhir import pgsafe
from app.fhir.normalize import pair_blood_pressure
from app.fhir.normalize.summaries import SummaryOptions, summarize
from app.ingest.blood_pressure import refresh_all
from migrations.history import CONSUMER_VIEW_COMMENT, consumer_views_0004

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The types whose summaries gained keys here (none depends on facility options or the clock); of
# Observations only the blood-pressure ones need their new ``effective_key`` now.
RESUMMARIZED = ("Condition", "Medication", "MedicationRequest")


def _num(expr: str) -> str:
    return f"CASE WHEN jsonb_typeof({expr}) = 'number' THEN ({expr})::text::numeric END"


def _bp_value(alias: str, side: str) -> str:
    # A panel's value is its component's; a half's is its own value, as the observations view reads it.
    panel, half = f"{alias}.normalized->'{side}'", f"{alias}.normalized->'value'"
    return f"CASE WHEN {alias}.normalized->>'bp_role' = 'panel' THEN {_num(panel)} ELSE {_num(half)} END"


VIEWS: dict[str, str] = {
    "observations": f"""
        SELECT facility_id, resource_id AS observation_id, normalized->>'subject' AS subject,
               normalized->>'encounter' AS encounter, normalized->>'effective' AS effective,
               normalized->>'category' AS category, normalized->>'code_system' AS code_system,
               normalized->>'code' AS code, normalized->>'display' AS display, normalized->>'loinc' AS loinc,
               {_num("normalized->'value'")} AS value_numeric, normalized->>'value_text' AS value_text,
               normalized->>'unit' AS unit, normalized->>'ucum_code' AS ucum_code,
               normalized->>'data_absent_reason' AS data_absent_reason, normalized->>'bp_role' AS bp_role,
               version_id, last_updated, ingested_at,
               normalized->>'status' AS status
        FROM resources WHERE resource_type = 'Observation' AND NOT deleted""",
    "blood_pressure_readings": f"""
        SELECT b.facility_id, b.subject, b.effective, b.encounter,
               {_bp_value("s", "systolic")} AS systolic, {_bp_value("d", "diastolic")} AS diastolic,
               b.unit, b.source_ids
        FROM blood_pressure_pairs b
        LEFT JOIN resources s ON s.facility_id = b.facility_id AND s.resource_type = 'Observation'
         AND s.resource_id = b.systolic_id
        LEFT JOIN resources d ON d.facility_id = b.facility_id AND d.resource_type = 'Observation'
         AND d.resource_id = b.diastolic_id""",
    "conditions": f"""
        SELECT facility_id, resource_id AS condition_id, normalized->>'subject' AS subject,
               normalized->>'encounter' AS encounter, normalized->>'code_system' AS code_system,
               normalized->>'code' AS code, normalized->>'display' AS display,
               normalized->>'clinical_status' AS clinical_status,
               normalized->>'verification_status' AS verification_status, normalized->>'onset' AS onset,
               normalized->>'recorded_date' AS recorded_date, version_id, last_updated, ingested_at,
               normalized->>'onset_type' AS onset_type, normalized->>'onset_start' AS onset_start,
               normalized->>'onset_end' AS onset_end, {_num("normalized->'onset_age_low'")} AS onset_age_low,
               {_num("normalized->'onset_age_high'")} AS onset_age_high,
               normalized->>'onset_age_unit' AS onset_age_unit
        FROM resources WHERE resource_type = 'Condition' AND NOT deleted""",
    # The request's own summary resolves a codeable concept or a contained Medication; a separate
    # Medication (Epic) is resolved here, and then code, system and display all come from it.
    "medication_requests": """
        SELECT facility_id, medication_request_id, subject, status, intent, authored_on, medication_code,
               medication_system, medication_display, medication_ref, version_id, last_updated, ingested_at,
               CASE WHEN unresolved IS NOT NULL THEN unresolved
                    WHEN medication_code IS NULL OR medication_system IS NULL THEN 'no_code' END
                 AS medication_unresolved,
               medication_ingredients
        FROM (
          SELECT mr.facility_id, mr.resource_id AS medication_request_id,
                 mr.normalized->>'subject' AS subject, mr.normalized->>'status' AS status,
                 mr.normalized->>'intent' AS intent, mr.normalized->>'authored_on' AS authored_on,
                 CASE WHEN ref IS NULL THEN mr.normalized->>'medication_code' ELSE med.normalized->>'code' END
                   AS medication_code,
                 CASE WHEN ref IS NULL THEN mr.normalized->>'medication_system'
                      ELSE med.normalized->>'system' END AS medication_system,
                 CASE WHEN ref IS NULL OR med.resource_id IS NULL THEN mr.normalized->>'medication_display'
                      ELSE med.normalized->>'display' END AS medication_display,
                 ref AS medication_ref, mr.version_id, mr.last_updated, mr.ingested_at,
                 CASE WHEN ref IS NULL THEN mr.normalized->>'medication_unresolved'
                      WHEN med.resource_id IS NULL THEN 'medication_not_stored'
                      ELSE med.normalized->>'unresolved' END AS unresolved,
                 CASE WHEN ref IS NULL THEN mr.normalized->'medication_ingredients'
                      ELSE med.normalized->'ingredients' END AS medication_ingredients
          FROM resources mr
          CROSS JOIN LATERAL (SELECT mr.normalized->>'medication_ref' AS ref) r
          LEFT JOIN resources med
            ON med.facility_id = mr.facility_id AND med.resource_type = 'Medication' AND NOT med.deleted
           AND 'Medication/' || med.resource_id = r.ref
          WHERE mr.resource_type = 'MedicationRequest' AND NOT mr.deleted
        ) resolved""",
    "allergies": """
        SELECT facility_id, resource_id AS allergy_id, normalized->>'patient' AS patient,
               normalized->>'code' AS code, normalized->>'display' AS display,
               normalized->>'clinical_status' AS clinical_status, normalized->>'criticality' AS criticality,
               normalized->>'recorded_date' AS recorded_date, version_id, last_updated, ingested_at,
               normalized->>'verification_status' AS verification_status
        FROM resources WHERE resource_type = 'AllergyIntolerance' AND NOT deleted""",
}


def _create_pairs_table() -> None:
    op.create_table(
        "blood_pressure_pairs",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), nullable=False),
        sa.Column("subject", sa.Text),
        sa.Column("effective_key", sa.Text),  # the pairing group's instant (Observation summary)
        sa.Column("effective", sa.Text),
        sa.Column("encounter", sa.Text),
        sa.Column("systolic_id", sa.String(128)),
        sa.Column("diastolic_id", sa.String(128)),
        sa.Column("unit", sa.Text),
        sa.Column("source_ids", ARRAY(sa.Text), nullable=False),
    )
    op.execute(
        "CREATE INDEX ix_blood_pressure_pairs_group ON blood_pressure_pairs "
        "(facility_id, coalesce(subject, ''), coalesce(effective_key, ''))"
    )
    op.create_table(
        "blood_pressure_members",
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), primary_key=True),
        sa.Column("resource_id", sa.String(128), primary_key=True),
        sa.Column("subject", sa.Text),
        sa.Column("effective_key", sa.Text),
    )
    op.execute(
        "CREATE INDEX ix_blood_pressure_members_group ON blood_pressure_members "
        "(facility_id, coalesce(subject, ''), coalesce(effective_key, ''))"
    )
    op.execute(
        "CREATE INDEX ix_resources_bp_group ON resources "
        "(facility_id, coalesce(normalized->>'subject', ''), coalesce(normalized->>'effective_key', '')) "
        "WHERE resource_type = 'Observation' AND normalized->>'bp_role' IS NOT NULL"
    )


def _resummarize(chunk: int = 1000) -> None:
    """New summary keys for what is already stored, streamed ``chunk`` rows at a time."""
    bind = op.get_bind()
    stored = sa.text(
        "SELECT facility_id, resource_type, resource_id, resource FROM resources "
        "WHERE resource IS NOT NULL AND (resource_type = ANY(:types)"
        " OR (resource_type = 'Observation' AND normalized->>'bp_role' IS NOT NULL))"
    ).execution_options(stream_results=True, yield_per=chunk)  # this statement only: DDL follows
    rows = bind.execute(stored, {"types": list(RESUMMARIZED)})
    update = sa.text(
        "UPDATE resources SET normalized = coalesce(normalized, '{}'::jsonb) || CAST(:summary AS jsonb) "
        "WHERE facility_id = :f AND resource_type = :t AND resource_id = :i"
    )
    now = datetime.now(UTC)
    for part in rows.partitions(chunk):
        batch: list[dict[str, Any]] = [
            {
                "f": row.facility_id,
                "t": row.resource_type,
                "i": row.resource_id,
                "summary": pgsafe.dumps(
                    summarize(row.resource, now, SummaryOptions()) if isinstance(row.resource, dict) else {}
                ),
            }
            for row in part
        ]
        bind.execute(update, batch)


def upgrade() -> None:
    _create_pairs_table()
    _resummarize()
    refresh_all(op.get_bind(), pair_blood_pressure)
    for name, body in VIEWS.items():
        op.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")


def downgrade() -> None:
    previous = consumer_views_0004()
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
        op.execute(f"CREATE VIEW {name} AS {previous[name]}")
        op.execute(f"COMMENT ON VIEW {name} IS '{CONSUMER_VIEW_COMMENT}'")
    op.execute("DROP INDEX IF EXISTS ix_resources_bp_group")
    op.drop_table("blood_pressure_members")
    op.drop_table("blood_pressure_pairs")
