"""Simulator configuration, loaded from YAML (see the module ``ehrsim`` docstring for an example)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ehrsim.profiles import get_profile


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClientConfig(_Model):
    """A backend-services client registered with a facility (private_key_jwt)."""

    client_id: Annotated[str, Field(min_length=1)]
    public_key_file: Path | None = None
    public_key_pem: str | None = None  # inline alternative to public_key_file
    scopes: list[str] = ["system/*.read"]

    @model_validator(mode="after")
    def _one_key(self) -> ClientConfig:
        if (self.public_key_file is None) == (self.public_key_pem is None):
            raise ValueError("give exactly one of public_key_file and public_key_pem")
        return self

    def public_key_bytes(self) -> bytes:
        if self.public_key_pem is not None:
            return self.public_key_pem.encode()
        assert self.public_key_file is not None  # guaranteed by _one_key
        return self.public_key_file.read_bytes()


class WebhookConfig(_Model):
    """Where the sender POSTs id-only notifications, and how hard it tries."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    headers: dict[str, str] = {}
    subscription_id: str = "sub-1"
    topic: str = "http://example.org/fhir/SubscriptionTopic/all-changes"
    max_attempts: Annotated[int, Field(ge=1)] = 5  # total attempts, then the notification is dropped
    backoff_initial_s: Annotated[float, Field(ge=0)] = 0.2
    backoff_max_s: Annotated[float, Field(ge=0)] = 5.0
    timeout_s: Annotated[float, Field(gt=0)] = 10.0
    concurrency: Annotated[int, Field(ge=1)] = 8  # notifications in flight at once


class FacilityConfig(_Model):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]
    profile: str = "generic"
    seed: int = 1
    patients: Annotated[int, Field(ge=0)] = 5
    token_lifetime_s: Annotated[int, Field(ge=1)] = 300
    clients: list[ClientConfig] = []
    webhook: WebhookConfig | None = None

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        get_profile(value)
        return value


class SimConfig(_Model):
    public_base_url: str | None = None  # origin the sender uses in notification URLs
    facilities: list[FacilityConfig]

    @model_validator(mode="after")
    def _unique_ids(self) -> SimConfig:
        ids = [f.id for f in self.facilities]
        if len(ids) != len(set(ids)):
            raise ValueError("facility ids must be unique")
        return self


def load_config(path: str | Path) -> SimConfig:
    """Parse a YAML config; relative key files are resolved against the config file's directory."""
    path = Path(path)
    config = SimConfig.model_validate(yaml.safe_load(path.read_text()))
    base = path.resolve().parent
    facilities = [
        f.model_copy(
            update={
                "clients": [
                    c.model_copy(update={"public_key_file": base / c.public_key_file})
                    if c.public_key_file is not None
                    else c
                    for c in f.clients
                ]
            }
        )
        for f in config.facilities
    ]
    return config.model_copy(update={"facilities": facilities})
