"""The cohort Group's members as ``app.reconcile.cohort`` reads them from an EHR's Group."""

from __future__ import annotations

from app.reconcile.cohort import group_patients

BASE = "https://ehr.example/fhir"


def test_members_that_are_no_objects_are_left_out_not_a_failed_run() -> None:
    group = {
        "resourceType": "Group",
        "member": [
            {"entity": {"reference": "Patient/p1"}},
            "Patient/p2",  # not a member object: malformed, counted, not raised
            None,
            {"entity": {"reference": "Patient/p3"}, "inactive": True},
            {"entity": {"reference": "Practitioner/d1"}},
        ],
    }

    assert group_patients(group, BASE) == (["p1"], 4)
