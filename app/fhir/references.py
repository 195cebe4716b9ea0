"""Resource references as notifications carry them: relative, absolute, with ``/_history/n``.

An absolute reference must point inside the facility's registered base URL (``app.fhir.base_url``);
anything else is refused (DESIGN.md rule 5) before any connection is made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.errors import ForeignHostError, NotificationError
from app.fhir.base_url import path_under_base

_TYPE = r"[A-Z][A-Za-z]{1,63}"
_ID = r"[A-Za-z0-9\-.]{1,64}"
_RELATIVE = re.compile(
    rf"^(?P<type>{_TYPE})/(?P<id>{_ID})(?:/_history/(?P<version>[A-Za-z0-9\-.]{{1,64}}))?$"
)


@dataclass(frozen=True)
class ResourceRef:
    resource_type: str
    resource_id: str
    version: str | None = None

    @property
    def relative(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


_TYPE_ONLY = re.compile(rf"{_TYPE}")
_ID_ONLY = re.compile(_ID)


def resource_ref(resource_type: str, resource_id: str) -> ResourceRef:
    """The reference of a resource named by its own ``resourceType`` and ``id`` (a bare resource, a
    payload): both must be what FHIR allows, never a path or a URL to be resolved. Raises
    NotificationError otherwise."""
    if (
        _TYPE_ONLY.fullmatch(resource_type) is None
        or _ID_ONLY.fullmatch(resource_id) is None
        or not resource_id.strip(".")
    ):
        raise NotificationError("bad_reference", "resourceType or id is not a FHIR type or id")
    return ResourceRef(resource_type, resource_id)


def parse_reference(reference: str, base_url: str) -> ResourceRef:
    """Parse a focus reference. Raises ForeignHostError for an absolute URL outside ``base_url`` and
    NotificationError for anything that is not a resource reference."""
    ref = reference.strip()
    base = base_url.rstrip("/") + "/"
    if ref.startswith(base) and "?" not in ref and "#" not in ref:
        ref = ref[len(base) :]  # the common case, without a full URL parse
    elif "://" in ref:
        relative = path_under_base(ref, base_url)
        if relative is None:
            raise ForeignHostError(detail="reference outside the facility's registered base URL")
        ref = relative
    match = _RELATIVE.match(ref)
    if match is None or not match["id"].strip("."):  # "." and ".." are path segments, not FHIR ids
        raise NotificationError("bad_reference", "focus is not a Type/id reference")
    return ResourceRef(match["type"], match["id"], match["version"])
