"""The YAML contract for ``ehr-ingest facilities apply FILE``.

```yaml
facilities:
  - id: general-hospital
    vendor: generic                       # epic | oracle | athena | meditech | medplum | hapi | generic
    base_url: https://ehr.example.org/fhir
    auth:
      method: private_key_jwt             # SMART Backend Services
      client_id: my-client
      private_key: {file: /run/secrets/general.pem}   # or {env: GENERAL_PRIVATE_KEY}
      algorithm: RS384                    # or ES384
      key_id: key-1                       # optional JWT `kid`
      scopes: [system/*.read]
      token_url: null                     # optional; discovered from .well-known/smart-configuration
    webhook:
      method: shared-secret               # shared-secret | x-signature | hub-signature | standard-webhooks
      header: Authorization               # where the EHR puts its shared secret (or signature)
      scheme: Bearer                      # optional prefix ("Bearer <secret>"); shared-secret only
      secret: {env: GENERAL_WEBHOOK_SECRET}
      previous_secret: {env: GENERAL_WEBHOOK_SECRET_OLD}   # optional: still accepted while rotating
      tolerance_s: 300                    # standard-webhooks: replay window around webhook-timestamp
      event_identity: null                # number | event-id; default by vendor (athena: event-id)
    reconcile:                            # optional; every key has a default
      interval: PT5M                      # how often the reconciler polls this facility
      types: [Patient, Observation]       # default: the vendor adapter's reconcile types
      strategy: {Observation: last-updated}  # per type; default: the vendor adapter's
      overlap: PT5M                       # re-read this much before the watermark (never below the vendor's)
      recrawl_interval: PT24H             # full re-crawl comparing content (finds deletions, silent edits)
      initial_since: 2026-01-01T00:00:00Z # a facility seen for the first time is backfilled from here
```
Secrets are references (a file path or an environment variable name); their values never enter the database.

Sender authentication methods (the receiver checks them before parsing anything):

- ``shared-secret``: ``header`` equals ``scheme secret`` (constant-time compare).
- ``x-signature`` (Medplum): ``X-Signature`` is the hex HMAC-SHA256 of the raw body.
- ``hub-signature`` (athena): ``X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>``.
- ``standard-webhooks``: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64>`` over
  ``{id}.{timestamp}.{body}``; the secret is ``whsec_<base64 key>`` (or raw); the timestamp must lie within
  ``tolerance_s`` of now.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, HttpUrl, model_validator

from app.reconcile import StrategyName

Vendor = Literal["epic", "oracle", "athena", "meditech", "medplum", "hapi", "generic"]


class SecretRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise ValueError("a secret reference names exactly one of `file` or `env`")
        return self

    def describe(self) -> str:
        return f"file:{self.file}" if self.file is not None else f"env:{self.env}"


class AuthConfig(BaseModel):
    """How we obtain access tokens: SMART Backend Services (``private_key_jwt``) or a client secret
    (``client_secret_basic`` / ``client_secret_post``, which Oracle, athena and Medplum also accept)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["private_key_jwt", "client_secret_basic", "client_secret_post"] = "private_key_jwt"
    client_id: str = Field(min_length=1)
    private_key: SecretRef | None = None
    client_secret: SecretRef | None = None
    algorithm: Literal["RS384", "ES384"] = "RS384"
    key_id: str | None = None
    jku: HttpUrl | None = None
    scopes: list[str] = Field(default_factory=lambda: ["system/*.read"])
    token_url: HttpUrl | None = None

    @model_validator(mode="after")
    def _credential_for_method(self) -> AuthConfig:
        if self.method == "private_key_jwt" and self.private_key is None:
            raise ValueError("method private_key_jwt needs `private_key`")
        if self.method != "private_key_jwt" and self.client_secret is None:
            raise ValueError(f"method {self.method} needs `client_secret`")
        return self

    @property
    def credential(self) -> SecretRef:
        ref = self.private_key if self.method == "private_key_jwt" else self.client_secret
        assert ref is not None
        return ref


class LimitsConfig(BaseModel):
    """Politeness towards one facility, shared by every worker process (Redis)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_second: float = Field(default=20.0, gt=0)
    burst: int = Field(default=20, ge=1)
    concurrency: int = Field(default=8, ge=1)


WebhookMethod = Literal["shared-secret", "x-signature", "hub-signature", "standard-webhooks"]

DEFAULT_HEADERS: dict[str, str] = {
    "shared-secret": "Authorization",
    "x-signature": "X-Signature",
    "hub-signature": "X-Hub-Signature",
    "standard-webhooks": "webhook-signature",
}


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: WebhookMethod = "shared-secret"
    header: str | None = None  # default per method (DEFAULT_HEADERS)
    scheme: str | None = "Bearer"
    secret: SecretRef
    previous_secret: SecretRef | None = None
    tolerance_s: int = Field(default=300, ge=1, le=3600)
    event_identity: Literal["number", "event-id"] | None = None

    @property
    def effective_header(self) -> str:
        return self.header or DEFAULT_HEADERS[self.method]


class ReconcileConfig(BaseModel):
    """The reconciler's settings for one facility; unset keys take the vendor adapter's defaults."""

    model_config = ConfigDict(extra="forbid")

    interval: timedelta = Field(default=timedelta(minutes=5), gt=timedelta(0))
    types: list[str] | None = None
    strategy: dict[str, StrategyName] = Field(default_factory=dict)
    overlap: timedelta | None = Field(default=None, ge=timedelta(0))
    recrawl_interval: timedelta = Field(default=timedelta(hours=24), gt=timedelta(0))
    initial_since: AwareDatetime | None = None


class FacilityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    vendor: Vendor = "generic"
    base_url: HttpUrl
    auth: AuthConfig
    webhook: WebhookConfig | None = None
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    mrn_system: str | None = Field(default=None, description="identifier system of this facility's MRNs")
    enabled: bool = True
    reconcile: ReconcileConfig = Field(default_factory=ReconcileConfig)


class FacilitiesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    facilities: list[FacilityConfig]

    @model_validator(mode="after")
    def _unique_ids(self) -> FacilitiesFile:
        ids = [f.id for f in self.facilities]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"duplicate facility ids: {', '.join(duplicated)}")
        return self
