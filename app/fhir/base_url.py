"""The base-URL guard (DESIGN.md rule 5): whether a URL lies under a facility's registered FHIR base.

One function decides it for every URL we would send the facility's token to (search pages, ``next``
links, redirects) and for every absolute focus reference. Under the base means: the same scheme, host
and port (a scheme's default port may be spelled out or not), no userinfo, no fragment, and a path equal
to the base path or below it, with or without the trailing slash, and no ``..`` segment however it is
encoded. HAPI's ``next`` links (``{base}?_getpages=…``) name the base itself, so the base path alone is
under the base.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, unquote, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SEGMENT_SEPARATORS = re.compile(r"[/\\]")  # some servers take a backslash for a slash


def path_under_base(url: str, base_url: str, *, allow_query: bool = False) -> str | None:
    """The path of ``url`` below ``base_url`` (``""`` for the base itself) when ``url`` lies under it,
    else None. A query string is allowed only when ``allow_query``. Never raises."""
    try:
        u, b = urlsplit(url), urlsplit(base_url)
        if _origin(u) is None or _origin(u) != _origin(b):
            return None
    except ValueError:  # a port that is not a number, a malformed IPv6 host
        return None
    if u.username is not None or u.password is not None or u.fragment or (u.query and not allow_query):
        return None
    base_path = b.path.rstrip("/")
    if u.path in (base_path, f"{base_path}/"):
        return ""
    if not u.path.startswith(f"{base_path}/"):
        return None
    rest = u.path[len(base_path) + 1 :]
    # Servers decode %2e%2e (and %2f) before resolving dot segments: refuse them decoded.
    return None if ".." in _SEGMENT_SEPARATORS.split(unquote(rest)) else rest


def is_under_base(url: str, base_url: str) -> bool:
    """Whether a request URL (query string allowed) may be sent to the facility with its token."""
    return path_under_base(url, base_url, allow_query=True) is not None


def _origin(parts: SplitResult) -> tuple[str, str, int] | None:
    scheme = parts.scheme.lower()
    if not parts.hostname or scheme not in _DEFAULT_PORTS:
        return None
    return scheme, parts.hostname.lower(), parts.port or _DEFAULT_PORTS[scheme]
