"""Normalization of FHIR R4 resources: pure functions, no I/O, no clock (``now`` is passed in), no database.
Vendor adapters (``app.vendors``) compose these; the vendor-neutral rules live here.

``normalize_resource(resource, now=..., options=...) -> Normalized`` reads the resource with identifier
values trimmed (nothing else changed; the stored body stays as the EHR sent it), records validation
issues (``"path: error_type"``, never values) and builds the summary below.
``pair_blood_pressure(observations)`` turns panels and split halves into readings (keys in
``app.fhir.normalize.blood_pressure``).

Summary keys per resource type (the contract of the normalized SQL views). Every key is always present;
None when the resource does not say. References are ``Type/id`` (absolute URLs and ``/_history``
dropped); dates and times are strings exactly as sent (``"2019-05-28"`` stays a date).

Patient
    mrn             identifier in the facility's configured MRN system, else the one typed MR (v2-0203)
                    when none is configured; trimmed
    family, given   of the official name (``given`` joined with spaces)
    preferred_name  the name the patient prefers to be called, as text, chosen by value (names.py)
    official_name   the official name as text
    birth_date, gender
Observation
    subject, encounter, effective (dateTime, instant or period start), status
    effective_key   effective as one UTC instant string (date-only values as sent): the pairing key
    code_system, code, display   the LOINC coding if any, else SNOMED, else the first coding
    loinc           the LOINC code, or None (proprietary systems come first in Epic/Oracle payloads)
    value           number (valueQuantity.value or valueInteger); value_comparator (``<``, ``>=``...)
    value_text      a non-numeric value as text (coded value's display or code, string, date, boolean)
    unit            the unit as sent; ucum_code  UCUM code, from the quantity or derived from its unit
    data_absent_reason  dataAbsentReason code, or the data-absent-reason extension on the value
    category        observation-category code (``vital-signs``, ``laboratory``...), else the first
    bp_role         ``panel`` | ``systolic`` | ``diastolic`` | None; systolic, diastolic  a panel's values
Condition
    subject, encounter, code, code_system, display (SNOMED, else ICD-10-CM, else ICD-10, else first),
    category, clinical_status, verification_status, recorded_date,
    onset           as text whatever onset[x] is (dateTime, Period start, ``52 years``, ``50 a to 60 a``,
                    string); onset_type  ``dateTime`` | ``Period`` | ``Age`` | ``Range`` | ``string``;
    onset_start, onset_end  dateTime or Period bounds as sent;
    onset_age_low, onset_age_high, onset_age_unit  an Age (low = high) or Range as numbers, UCUM unit
MedicationRequest
    subject, encounter, status, intent, authored_on
    medication_code, medication_system, medication_display  RxNorm coding preferred over tenant synonyms;
                    from medicationCodeableConcept or a contained ``#id`` Medication, all from one place
    medication_ref  ``Medication/{id}`` when the medication is a separate resource (code fields None, the
                    display of the reference if any; the Medication is listed in ``Normalized.references``)
    medication_unresolved  why there is no code and system (``medications.UNRESOLVED``), None otherwise
    medication_ingredients  a contained Medication's ingredients (code, system, display, reference,
                    is_active), or None
Medication
    code, system, display       RxNorm preferred
    unresolved, ingredients     as medication_unresolved and medication_ingredients above
AllergyIntolerance
    patient, code, code_system, display (RxNorm, else SNOMED, else first), clinical_status,
    verification_status, criticality, recorded_date
Encounter
    subject, status, class_code, period_start, period_end, type_display
any other type: ``{}``
"""

from app.fhir.normalize.blood_pressure import bp_role, pair_blood_pressure
from app.fhir.normalize.normalized import Normalized, normalize_resource, references_to_fetch
from app.fhir.normalize.summaries import SUMMARIZED_TYPES, SummaryOptions, summarize
from app.fhir.normalize.units import ucum_code, ucum_for_unit
from app.fhir.normalize.validation import validation_issues

__all__ = [
    "SUMMARIZED_TYPES",
    "Normalized",
    "SummaryOptions",
    "bp_role",
    "normalize_resource",
    "pair_blood_pressure",
    "references_to_fetch",
    "summarize",
    "ucum_code",
    "ucum_for_unit",
    "validation_issues",
]
