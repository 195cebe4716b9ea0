"""Resolving secret references at the moment of use; values are never logged or stored."""

from __future__ import annotations

import os
from pathlib import Path

from app.errors import SecretMissing
from app.facilities.schemas import SecretRef


def resolve_secret(ref: SecretRef) -> str:
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if value is None:
            raise SecretMissing(f"environment variable {ref.env} is not set")
        return value
    assert ref.file is not None
    try:
        return Path(ref.file).read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretMissing(f"cannot read secret file {ref.file}: {exc.strerror}") from exc
