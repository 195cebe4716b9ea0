"""Access tokens for one facility: SMART Backend Services (client_credentials + private_key_jwt, RS384 or
ES384) or a client secret (HTTP Basic or form post).

Tokens are shared by every worker process through a ``TokenCache`` and renewed before ``expires_in``
runs out (there are no refresh tokens in this flow). One process renews while the others wait briefly
for its result, so a fleet of workers does not trip a token endpoint's rate limit. A token the server
rejects is discarded and fetched again once by the caller. Lifecycle events go to a ``TokenEventSink``.

A refusal of our credentials (revoked, a key rotated out: 4xx with an OAuth error) is shared through the
cache too: until its back-off runs out (``refusal_backoff_s``, doubling with each consecutive refusal up
to ``refusal_backoff_cap_s``) no process asks the token endpoint again, and every caller gets
``EHRAuthRejected`` at once. Every drain and reconcile run needs a token; without this each would ask
the endpoint, a retry loop against a server that already said no. New credentials (``facilities apply``)
are a new cache key: they are tried at once.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

import httpx
import jwt

from app.ehr import token_events
from app.ehr.retry_after import parse_retry_after
from app.ehr.token_cache import CachedToken, MemoryTokenCache, Refusal, TokenCache
from app.ehr.token_events import TokenEventSink
from app.errors import (
    EHRAuthRejected,
    EHRTransportError,
    SmartConfigInvalid,
    SmartConfigUnavailable,
    TokenEndpointFlaky,
    TokenEndpointThrottled,
    TokenEndpointUnavailable,
    TokenEndpointUntrusted,
    TokenResponseInvalid,
)
from app.facilities.schemas import AuthConfig

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 240  # the spec allows at most 300; leave room for clock skew
RENEWAL_LOCK_S = 30.0
WAIT_FOR_PEER_S = 5.0
REFUSAL_BACKOFF_S = 60.0
REFUSAL_BACKOFF_CAP_S = 900.0


def renewal_margin(expires_in: float) -> float:
    """Stop using a token this long before it expires: 10% of its life, between 5 and 60 seconds."""
    return min(60.0, max(5.0, expires_in * 0.1)) if expires_in > 10 else expires_in / 2


class SmartBackendAuth:
    """Thread- and process-safe token source for one facility."""

    def __init__(
        self,
        *,
        facility_id: str,
        base_url: str,
        config: AuthConfig,
        private_key: str,
        http: httpx.Client,
        cache: TokenCache | None = None,
        events: TokenEventSink = token_events.log_only,
        clock: Callable[[], float] = time.time,
        refusal_backoff_s: float = REFUSAL_BACKOFF_S,
        refusal_backoff_cap_s: float = REFUSAL_BACKOFF_CAP_S,
    ) -> None:
        self._facility_id = facility_id
        self._refusal_backoff_s = refusal_backoff_s
        self._refusal_backoff_cap_s = refusal_backoff_cap_s
        self._base_url = base_url.rstrip("/")
        self._config = config
        self._credential = private_key.strip() if config.method != "private_key_jwt" else private_key
        self._http = http
        self._cache = cache or MemoryTokenCache()
        self._events = events
        self._clock = clock
        self._token_url: str | None = str(config.token_url) if config.token_url else None
        fingerprint = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]
        self._key = f"{facility_id}:{fingerprint}"
        self._issued_before = False

    # -- discovery ---------------------------------------------------------------------------------

    def token_url(self) -> str:
        if self._token_url is None:
            url = f"{self._base_url}/.well-known/smart-configuration"
            try:
                response = self._http.get(url, headers={"Accept": "application/json"})
            except httpx.TransportError as exc:
                raise EHRTransportError(detail=f"smart-configuration: {type(exc).__name__}") from exc
            if response.status_code != 200:
                raise SmartConfigUnavailable(f"smart-configuration: {response.status_code}")
            try:
                endpoint = response.json().get("token_endpoint")
            except ValueError:
                endpoint = None
            if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
                raise SmartConfigInvalid("smart-configuration has no token_endpoint")
            if not _trusted_token_endpoint(endpoint, self._base_url):
                # Our credentials (a signed assertion or a client secret) go to this URL: a discovered one
                # must be on the facility's own host, over https unless the base URL itself is http.
                raise TokenEndpointUntrusted(
                    "discovered token_endpoint is on another host or downgrades to http; set auth.token_url",
                )
            self._token_url = endpoint
        return self._token_url

    # -- tokens ------------------------------------------------------------------------------------

    def token(self) -> str:
        cached = self._cache.get(self._key)
        if cached is not None:
            return cached.value
        if self._cache.renewal_lock(self._key, RENEWAL_LOCK_S):
            try:
                cached = self._cache.get(self._key)
                return cached.value if cached is not None else self._renew().value
            finally:
                self._cache.release_lock(self._key)
        # Another process is renewing: wait for its token rather than asking the endpoint again.
        deadline = time.monotonic() + WAIT_FOR_PEER_S
        while time.monotonic() < deadline:
            time.sleep(0.05)
            cached = self._cache.get(self._key)
            if cached is not None:
                return cached.value
            if self._standing_refusal() is not None:
                break  # the peer was refused: _renew raises without asking
        return self._renew().value

    def invalidate(self, value: str) -> None:
        """The server rejected ``value``: forget it (unless another process already replaced it)."""
        self._cache.discard(self._key, value)
        self._events(self._facility_id, token_events.EXPIRED_EARLY)

    def _standing_refusal(self) -> Refusal | None:
        refusal = self._cache.refusal(self._key)
        return refusal if refusal is not None and refusal.until > self._clock() else None

    def _renew(self) -> CachedToken:
        standing = self._standing_refusal()
        if standing is not None:
            wait_s = int(standing.until - self._clock()) + 1
            raise EHRAuthRejected(
                f"token endpoint refused our credentials ({standing.detail}); asked again in {wait_s} s"
            )
        value, expires_in = self._request_token()
        token = CachedToken(value, self._clock() + expires_in - renewal_margin(expires_in))
        self._cache.put(self._key, token)
        self._cache.clear_refusal(self._key)
        event = token_events.RENEWED if self._issued_before else token_events.ISSUED
        self._issued_before = True
        self._events(self._facility_id, event, expires_in=int(expires_in))
        return token

    def _record_refusal(self, detail: str) -> None:
        """Share the refusal: no process asks again until its back-off runs out."""
        previous = self._cache.refusal(self._key)
        count = previous.count + 1 if previous is not None else 1
        wait_s = _refusal_wait(self._refusal_backoff_s, self._refusal_backoff_cap_s, count)
        # Kept past its end (a cap longer), so that the next refusal doubles the back-off.
        keep_s = wait_s + self._refusal_backoff_cap_s
        self._cache.refuse(self._key, Refusal(self._clock() + wait_s, count, detail), keep_s=keep_s)

    def _client_authentication(self, token_url: str) -> tuple[dict[str, str], dict[str, str]]:
        """(form fields, headers) that authenticate us at the token endpoint."""
        method = self._config.method
        if method == "client_secret_basic":
            # RFC 6749 §2.3.1: form-urlencode both parts before Basic encoding.
            user = quote(self._config.client_id, safe="")
            password = quote(self._credential, safe="")
            basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            return {}, {"Authorization": f"Basic {basic}"}
        if method == "client_secret_post":
            return {"client_id": self._config.client_id, "client_secret": self._credential}, {}
        return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": self._assertion(token_url)}, {}

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
        if self._config.jku:
            headers["jku"] = str(self._config.jku)
        return jwt.encode(claims, self._credential, algorithm=self._config.algorithm, headers=headers)

    def _request_token(self) -> tuple[str, float]:
        token_url = self.token_url()
        fields, headers = self._client_authentication(token_url)
        data = {"grant_type": "client_credentials", "scope": " ".join(self._config.scopes), **fields}
        try:
            response = self._http.post(
                token_url, data=data, headers={"Accept": "application/json", **headers}
            )
        except httpx.TransportError as exc:
            raise EHRTransportError(detail=f"token endpoint: {type(exc).__name__}") from exc
        status = response.status_code
        if status == 429:
            # The client's retry tier waits this long (capped) before asking again, or leaves it to the
            # Postgres back-off when it is longer than a worker holds a request.
            retry_after = parse_retry_after(response.headers.get("retry-after"), now=datetime.now(UTC))
            raise TokenEndpointThrottled("token endpoint throttled", retry_after=retry_after)
        if status >= 500:
            raise TokenEndpointUnavailable(f"token endpoint answered {status}")
        error = _oauth_error(response)
        if status == 400 and error is None:
            # Epic's token endpoint occasionally answers a bare 400: transient, retried with back-off.
            raise TokenEndpointFlaky("token endpoint answered a bare 400")
        if status != 200:
            detail = f"{status} {error or '-'}"
            self._record_refusal(detail)
            self._events(self._facility_id, token_events.REJECTED, detail=detail)
            raise EHRAuthRejected(f"token endpoint answered {detail}")
        try:
            payload = response.json()
        except ValueError as exc:
            raise TokenResponseInvalid("token response is not JSON") from exc
        value, expires_in = payload.get("access_token"), payload.get("expires_in", 300)
        if not isinstance(value, str) or not isinstance(expires_in, int | float) or expires_in <= 0:
            raise TokenResponseInvalid("token response has no usable access_token")
        return value, float(expires_in)


def _refusal_wait(backoff_s: float, cap_s: float, count: int) -> float:
    """The back-off after the ``count``-th consecutive refusal: base x 2^(count-1), at most the cap. The
    exponent is bounded: the count keeps growing while credentials stay refused (one a cap), and 2^1024
    overflows a float."""
    return float(min(cap_s, backoff_s * 2 ** min(max(count - 1, 0), 64)))


def _trusted_token_endpoint(endpoint: str, base_url: str) -> bool:
    e, b = urlsplit(endpoint), urlsplit(base_url)
    same_host = (e.hostname, e.port) == (b.hostname, b.port)
    return same_host and e.scheme in ("https", b.scheme)


def _oauth_error(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return str(error) if error else None
