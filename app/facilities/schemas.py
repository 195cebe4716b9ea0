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
      header: Authorization               # where the EHR puts its shared secret
      scheme: Bearer                      # optional prefix ("Bearer <secret>")
      secret: {env: GENERAL_WEBHOOK_SECRET}
```
Secrets are references (a file path or an environment variable name); their values never enter the database.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

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
    model_config = ConfigDict(extra="forbid")

    method: Literal["private_key_jwt"] = "private_key_jwt"
    client_id: str = Field(min_length=1)
    private_key: SecretRef
    algorithm: Literal["RS384", "ES384"] = "RS384"
    key_id: str | None = None
    scopes: list[str] = Field(default_factory=lambda: ["system/*.read"])
    token_url: HttpUrl | None = None


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    header: str = "Authorization"
    scheme: str | None = "Bearer"
    secret: SecretRef


class FacilityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    vendor: Vendor = "generic"
    base_url: HttpUrl
    auth: AuthConfig
    webhook: WebhookConfig | None = None
    enabled: bool = True


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
