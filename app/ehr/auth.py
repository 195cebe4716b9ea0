"""SMART Backend Services (client_credentials + private_key_jwt) with a token cache.

The token is renewed before ``expires_in`` runs out; a token the server rejects is dropped and fetched
again once by the caller. Token lifecycle events are logged under ``ehr.token.*``, never the token.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import jwt
import structlog

from app.errors import EHRAuthRejected, EHRRateLimited, EHRTransportError, EHRUnavailable
from app.facilities.schemas import AuthConfig

log = structlog.get_logger("ehr.token")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 240  # the spec allows at most 300; leave room for clock skew


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # monotonic seconds


class SmartBackendAuth:
    """Thread-safe token source for one facility."""

    def __init__(
        self,
        *,
        facility_id: str,
        base_url: str,
        config: AuthConfig,
        private_key: str,
        http: httpx.Client,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._facility_id = facility_id
        self._base_url = base_url.rstrip("/")
        self._config = config
        self._private_key = private_key
        self._http = http
        self._clock = clock
        self._lock = threading.Lock()
        self._token: Token | None = None
        self._token_url: str | None = str(config.token_url) if config.token_url else None

    def token_url(self) -> str:
        if self._token_url is None:
            url = f"{self._base_url}/.well-known/smart-configuration"
            try:
                response = self._http.get(url, headers={"Accept": "application/json"})
            except httpx.TransportError as exc:
                raise EHRTransportError(detail=f"smart-configuration: {type(exc).__name__}") from exc
            if response.status_code != 200:
                raise EHRUnavailable(
                    "smart_config_unavailable", f"smart-configuration: {response.status_code}"
                )
            endpoint = response.json().get("token_endpoint")
            if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
                raise EHRAuthRejected("smart_config_invalid", "smart-configuration has no token_endpoint")
            self._token_url = endpoint
        return self._token_url

    def _assertion(self, token_url: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self._config.client_id,
            "sub": self._config.client_id,
            "aud": token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
            "jti": str(uuid.uuid4()),
        }
        headers = {"typ": "JWT"}
        if self._config.key_id:
            headers["kid"] = self._config.key_id
        return jwt.encode(claims, self._private_key, algorithm=self._config.algorithm, headers=headers)

    def _request_token(self) -> Token:
        token_url = self.token_url()
        data = {
            "grant_type": "client_credentials",
            "scope": " ".join(self._config.scopes),
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self._assertion(token_url),
        }
        try:
            response = self._http.post(token_url, data=data, headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            raise EHRTransportError(detail=f"token endpoint: {type(exc).__name__}") from exc
        if response.status_code == 429:
            raise EHRRateLimited(detail="token endpoint throttled")
        if response.status_code >= 500:
            raise EHRUnavailable(detail=f"token endpoint answered {response.status_code}")
        if response.status_code != 200:
            error = _oauth_error(response)
            log.warning(
                "ehr.token.rejected", facility_id=self._facility_id, status=response.status_code, error=error
            )
            raise EHRAuthRejected(detail=f"token endpoint answered {response.status_code} {error}")
        payload = response.json()
        value, expires_in = payload.get("access_token"), payload.get("expires_in", 300)
        if not isinstance(value, str) or not isinstance(expires_in, int | float):
            raise EHRAuthRejected("token_response_invalid", "token response has no access_token")
        # Renew before the end: 10% of the lifetime, at least 5 s and at most 60 s early.
        margin = min(60.0, max(5.0, expires_in * 0.1)) if expires_in > 10 else expires_in / 2
        log.info("ehr.token.issued", facility_id=self._facility_id, expires_in=expires_in)
        return Token(value, self._clock() + expires_in - margin)

    def token(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._token.expires_at:
                self._token = self._request_token()
            return self._token.value

    def invalidate(self, value: str) -> None:
        """Forget ``value`` (the server rejected it), unless another thread already replaced it."""
        with self._lock:
            if self._token is not None and self._token.value == value:
                log.info("ehr.token.expired_early", facility_id=self._facility_id)
                self._token = None


def _oauth_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "-"
    return str(body.get("error", "-")) if isinstance(body, dict) else "-"
