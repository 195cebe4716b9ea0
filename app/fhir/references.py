"""Resource references as notifications carry them: relative, absolute, with ``/_history/n``.

An absolute reference must point inside the facility's registered base URL; anything else is refused
(DESIGN.md rule 5) before any connection is made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from app.errors import ForeignHostError, NotificationError

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


def _same_origin_and_under(url: str, base_url: str, *, allow_query: bool = False) -> str | None:
    """The path of ``url`` after ``base_url`` if it lies under it (same scheme, host and port; no
    userinfo; no ``..`` segment), else None. A query string is allowed only when ``allow_query``."""
    try:
        u, b = urlsplit(url), urlsplit(base_url)
        if (u.scheme.lower(), u.hostname, u.port) != (b.scheme.lower(), b.hostname, b.port) or u.username:
            return None
    except ValueError:  # a port that is no number or out of range, a broken IPv6 host: not under the base
        return None
    base_path = b.path.rstrip("/") + "/"
    if not u.path.startswith(base_path) or u.fragment or (u.query and not allow_query):
        return None
    rest = u.path[len(base_path) :]
    return None if ".." in unquote(rest).split("/") else rest  # also %2e%2e, decoded by servers


def parse_reference(reference: str, base_url: str) -> ResourceRef:
    """Parse a focus reference. Raises ForeignHostError for an absolute URL outside ``base_url`` and
    NotificationError for anything that is not a resource reference."""
    ref = reference.strip()
    base = base_url.rstrip("/") + "/"
    if ref.startswith(base) and "?" not in ref and "#" not in ref:
        ref = ref[len(base) :]  # the common case, without a full URL parse
    elif "://" in ref:
        relative = _same_origin_and_under(ref, base_url)
        if relative is None:
            raise ForeignHostError(detail="reference outside the facility's registered base URL")
        ref = relative
    match = _RELATIVE.match(ref)
    if match is None or not match["id"].strip("."):  # "." and ".." are path segments, not FHIR ids
        raise NotificationError("bad_reference", "focus is not a Type/id reference")
    return ResourceRef(match["type"], match["id"], match["version"])


def is_under_base(url: str, base_url: str) -> bool:
    """Whether a request URL (query string allowed) may be sent to the facility with its token."""
    return _same_origin_and_under(url, base_url, allow_query=True) is not None
