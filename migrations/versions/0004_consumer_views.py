"""Normalized consumer views over current resources (the vendor adapters' summaries).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _num(expr: str) -> str:
    return f"CASE WHEN jsonb_typeof({expr}) = 'number' THEN ({expr})::text::numeric END"


VIEWS: dict[str, str] = {
    "patients": """
        SELECT facility_id, resource_id AS patient_id, normalized->>'mrn' AS mrn,
               normalized->>'preferred_name' AS preferred_name, normalized->>'official_name' AS official_name,
               normalized->>'family' AS family, normalized->>'given' AS given,
               normalized->>'birth_date' AS birth_date, normalized->>'gender' AS gender,
               version_id, last_updated, ingested_at
        FROM resources WHERE resource_type = 'Patient' AND NOT deleted""",
    "encounters": """
        SELECT facility_id, resource_id AS encounter_id, normalized->>'subject' AS subject,
               normalized->>'status' AS status, normalized->>'class_code' AS class_code,
               normalized->>'type_display' AS type_display, normalized->>'period_start' AS period_start,
               normalized->>'period_end' AS period_end, version_id, last_updated, ingested_at
        FROM resources WHERE resource_type = 'Encounter' AND NOT deleted""",
    "observations": f"""
        SELECT facility_id, resource_id AS observation_id, normalized->>'subject' AS subject,
               normalized->>'encounter' AS encounter, normalized->>'effective' AS effective,
               normalized->>'category' AS category, normalized->>'code_system' AS code_system,
               normalized->>'code' AS code, normalized->>'display' AS display, normalized->>'loinc' AS loinc,
               {_num("normalized->'value'")} AS value_numeric, normalized->>'value_text' AS value_text,
               normalized->>'unit' AS unit, normalized->>'ucum_code' AS ucum_code,
               normalized->>'data_absent_reason' AS data_absent_reason, normalized->>'bp_role' AS bp_role,
               version_id, last_updated, ingested_at
        FROM resources WHERE resource_type = 'Observation' AND NOT deleted""",
    # One row per blood-pressure reading: a US Core panel (85354-9) as it is, or a systolic (8480-6) and a
    # diastolic (8462-4) Observation paired by subject, effective time and encounter (Oracle sends them
    # apart when they were not paired in Millennium); an unpaired half is a reading with the other value NULL.
    "blood_pressure_readings": f"""
        SELECT facility_id, normalized->>'subject' AS subject, normalized->>'effective' AS effective,
               normalized->>'encounter' AS encounter, {_num("normalized->'systolic'")} AS systolic,
               {_num("normalized->'diastolic'")} AS diastolic, 'mm[Hg]'::text AS unit,
               ARRAY[resource_id]::text[] AS source_ids
        FROM resources
        WHERE resource_type = 'Observation' AND NOT deleted AND normalized->>'bp_role' = 'panel'
        UNION ALL
        SELECT coalesce(s.facility_id, d.facility_id),
               coalesce(s.normalized, d.normalized)->>'subject',
               coalesce(s.normalized, d.normalized)->>'effective',
               coalesce(s.normalized, d.normalized)->>'encounter',
               {_num("s.normalized->'value'")}, {_num("d.normalized->'value'")}, 'mm[Hg]'::text,
               array_remove(ARRAY[s.resource_id, d.resource_id], NULL)::text[]
        FROM (SELECT * FROM resources WHERE resource_type = 'Observation' AND NOT deleted
              AND normalized->>'bp_role' = 'systolic') s
        FULL JOIN (SELECT * FROM resources WHERE resource_type = 'Observation' AND NOT deleted
                   AND normalized->>'bp_role' = 'diastolic') d
          ON d.facility_id = s.facility_id
         AND d.normalized->>'subject' = s.normalized->>'subject'
         AND d.normalized->>'effective' = s.normalized->>'effective'
         AND (d.normalized->>'encounter') IS NOT DISTINCT FROM (s.normalized->>'encounter')""",
    "conditions": """
        SELECT facility_id, resource_id AS condition_id, normalized->>'subject' AS subject,
               normalized->>'encounter' AS encounter, normalized->>'code_system' AS code_system,
               normalized->>'code' AS code, normalized->>'display' AS display,
               normalized->>'clinical_status' AS clinical_status,
               normalized->>'verification_status' AS verification_status, normalized->>'onset' AS onset,
               normalized->>'recorded_date' AS recorded_date, version_id, last_updated, ingested_at
        FROM resources WHERE resource_type = 'Condition' AND NOT deleted""",
    # The medication is resolved whatever its shape: a codeable concept or contained Medication (in the
    # request's own summary) or a separate Medication resource (Epic), joined here.
    "medication_requests": """
        SELECT mr.facility_id, mr.resource_id AS medication_request_id, mr.normalized->>'subject' AS subject,
               mr.normalized->>'status' AS status, mr.normalized->>'intent' AS intent,
               mr.normalized->>'authored_on' AS authored_on,
               coalesce(mr.normalized->>'medication_code', med.normalized->>'code') AS medication_code,
               coalesce(mr.normalized->>'medication_system', med.normalized->>'system') AS medication_system,
               coalesce(mr.normalized->>'medication_display', med.normalized->>'display')
                 AS medication_display,
               mr.normalized->>'medication_ref' AS medication_ref,
               mr.version_id, mr.last_updated, mr.ingested_at
        FROM resources mr
        LEFT JOIN resources med
          ON med.facility_id = mr.facility_id AND med.resource_type = 'Medication'
         AND 'Medication/' || med.resource_id = mr.normalized->>'medication_ref'
        WHERE mr.resource_type = 'MedicationRequest' AND NOT mr.deleted""",
    "allergies": """
        SELECT facility_id, resource_id AS allergy_id, normalized->>'patient' AS patient,
               normalized->>'code' AS code, normalized->>'display' AS display,
               normalized->>'clinical_status' AS clinical_status, normalized->>'criticality' AS criticality,
               normalized->>'recorded_date' AS recorded_date, version_id, last_updated, ingested_at
        FROM resources WHERE resource_type = 'AllergyIntolerance' AND NOT deleted""",
}


def upgrade() -> None:
    op.execute(
        "CREATE INDEX ix_resources_bp_pairing ON resources "
        "(facility_id, (normalized->>'subject'), (normalized->>'effective')) "
        "WHERE resource_type = 'Observation' AND normalized ? 'bp_role'"
    )
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")
        op.execute(
            f"COMMENT ON VIEW {name} IS 'Consumer view over current_resources; see README, For consumers.'"
        )


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute("DROP INDEX IF EXISTS ix_resources_bp_pairing")
