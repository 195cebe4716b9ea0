"""Simulator configuration, loaded from YAML (see the module ``ehrsim`` docstring for an example)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ehrsim.faults import FaultConfig
from ehrsim.hl7 import PROFILE_VERSIONS, VERSIONS
from ehrsim.profiles import NotificationStyle, customize, get_profile


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClientConfig(_Model):
    """A backend-services client registered with a facility: a public key (private_key_jwt, RS384 or
    ES384), a JWKS URL the server fetches keys from, and/or a client secret (Basic or post, where the
    profile allows it)."""

    client_id: Annotated[str, Field(min_length=1)]
    public_key_file: Path | None = None
    public_key_pem: str | None = None  # inline alternative to public_key_file
    jwks_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    client_secret: str | None = None
    scopes: list[str] = ["system/*.read"]

    @model_validator(mode="after")
    def _one_key(self) -> ClientConfig:
        if self.public_key_file is not None and self.public_key_pem is not None:
            raise ValueError("give at most one of public_key_file and public_key_pem")
        if not self.has_key() and self.jwks_url is None and self.client_secret is None:
            raise ValueError("give a public key, a jwks_url or a client_secret")
        return self

    def has_key(self) -> bool:
        return self.public_key_file is not None or self.public_key_pem is not None

    def public_key_bytes(self) -> bytes:
        if self.public_key_pem is not None:
            return self.public_key_pem.encode()
        assert self.public_key_file is not None  # guaranteed by _one_key
        return self.public_key_file.read_bytes()


class WebhookConfig(_Model):
    """The subscription that exists at start: where the sender delivers, in which shape, and how hard
    it tries. Unset fields take the profile's values (retry durations scaled by ``time_scale``)."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    headers: dict[str, str] = {}
    subscription_id: str = "sub-1"
    topic: str = "http://example.org/fhir/SubscriptionTopic/all-changes"
    criteria: str | None = None  # "Observation" or "Observation?...": only changes of that type
    style: NotificationStyle | None = None  # default: the profile's notification style
    payload: Literal["id-only", "full-resource", "empty"] | None = None  # default: the profile's first
    secret: str | None = None  # HMAC key (athena X-Hub-Signature, Medplum X-Signature)
    hapi_deletes: bool = True  # HAPI: send DELETE {endpoint}/{Type}/{id} (else deletes go unnotified)
    heartbeat_s: Annotated[float, Field(gt=0)] | None = None  # no heartbeats when unset
    handshake: bool = False  # start ``requested`` and activate on a successful handshake
    max_attempts: Annotated[int, Field(ge=1)] | None = None  # total attempts, then dropped
    retry_window_s: Annotated[float, Field(gt=0)] | None = None  # stop retrying this long after the first
    backoff_initial_s: Annotated[float, Field(ge=0)] | None = None
    backoff_max_s: Annotated[float, Field(ge=0)] | None = None
    timeout_s: Annotated[float, Field(gt=0)] | None = None  # default: the profile's, scaled
    concurrency: Annotated[int, Field(ge=1)] = 8  # notifications in flight at once


class MllpConfig(_Model):
    """The facility's HL7 v2 ADT feed (epic, oracle and meditech profiles): where the MLLP sender
    connects, who it says it is (MSH-3/4), the version it speaks and how it retries. Durations are
    taken as given (not scaled by ``time_scale``)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)]
    sending_application: Annotated[str, Field(min_length=1)] = "EHRSIM"  # MSH-3
    sending_facility: str | None = None  # MSH-4; default: the facility id upper-cased
    receiving_application: str = "EHR-INGEST"  # MSH-5
    receiving_facility: str = "EHR-INGEST"  # MSH-6
    version: str | None = None  # MSH-12; default: the profile's (epic 2.5.1, oracle 2.3, meditech 2.4)
    mrn_authority: str | None = None  # PID-3.4 namespace; default: Epic "EPI", else MSH-4
    ack_timeout_s: Annotated[float, Field(gt=0)] = 30.0  # no ACK by then: resend
    backoff_initial_s: Annotated[float, Field(ge=0)] = 1.0  # before a reconnect or a resend after AE
    backoff_max_s: Annotated[float, Field(ge=0)] = 30.0
    max_attempts: Annotated[int, Field(ge=1)] = 20  # complete sends of one message, then given up

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: str | None) -> str | None:
        if value is not None and value not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}")
        return value


class GroupConfig(_Model):
    """A Group of the facility's patients (``ehrsim.groups``): ``members`` are Patient ids; none (null):
    every live patient."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
    members: list[str] | None = None


class FacilityConfig(_Model):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]
    profile: str = "generic"
    seed: int = 1
    patients: Annotated[int, Field(ge=0)] = 5
    token_lifetime_s: Annotated[float, Field(gt=0)] | None = None  # default: the profile's, scaled
    time_scale: Annotated[float, Field(gt=0)] = 1.0  # multiplies the profile's durations (tests: 0.001)
    clients: list[ClientConfig] = []
    webhook: WebhookConfig | None = None
    mllp: MllpConfig | None = None  # an HL7 v2 ADT feed over MLLP (epic, oracle, meditech)
    faults: FaultConfig = FaultConfig()
    profile_overrides: dict[str, Any] = {}  # Profile fields to change, e.g. {"token_flaky_400_rate": 0}
    groups: list[GroupConfig] = []  # the cohorts of Group/{id}/$export; read/searched where group_read

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        get_profile(value)
        return value

    @model_validator(mode="after")
    def _valid_overrides(self) -> FacilityConfig:
        customize(get_profile(self.profile), self.profile_overrides)
        return self

    @model_validator(mode="after")
    def _mllp_profile(self) -> FacilityConfig:
        if self.mllp is not None and self.mllp.version is None and self.profile not in PROFILE_VERSIONS:
            raise ValueError(
                f"mllp: the {self.profile} profile has no HL7 v2 feed (give mllp.version to have one)"
            )
        return self


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
