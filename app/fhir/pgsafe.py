"""What Postgres cannot store, made storable: NUL characters and unpaired UTF-16 surrogates are valid in
JSON text but refused by ``text`` and ``jsonb``. One such string in a shared transaction would fail every
other row with it, so it is replaced by U+FFFD, and the resource is kept rather than lost."""

from __future__ import annotations

import re
from typing import Any

from app.fhir import jsonwire

REPLACEMENT = "\ufffd"
# In JSON text: a \\u0000 escape or a surrogate escape (paired or not), preceded by an even number of
# backslashes so that an escaped backslash followed by "u0000" is left alone.
_SUSPECT = re.compile(rb"(?<!\\)(?:\\\\)*\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_LONE_SURROGATE = re.compile(r"[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")


def needs_cleaning(raw: bytes) -> bool:
    """Cheap pre-check on JSON text; false positives (paired surrogates) only cost a walk. Almost no
    body has a ``\\u`` escape at all: a substring test (far cheaper than the expression) skips the scan."""
    return b"\\u" in raw and _SUSPECT.search(raw) is not None


def clean(value: Any) -> Any:
    """``value`` with NUL and unpaired surrogates in every string (keys included) replaced."""
    if isinstance(value, str):
        if "\x00" in value or _LONE_SURROGATE.search(value):
            return _LONE_SURROGATE.sub(REPLACEMENT, value.replace("\x00", REPLACEMENT))
        return value
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    return value


def dumps(value: Any) -> str:
    """JSON text Postgres will accept as jsonb, decimals as sent (``app.fhir.jsonwire``)."""
    text = jsonwire.dumps(value)
    return jsonwire.dumps(clean(value)) if needs_cleaning(text.encode()) else text
