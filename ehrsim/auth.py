"""SMART Backend Services auth of one facility: ``client_credentials`` with a ``private_key_jwt``
assertion (RS384 / ES384, keys registered or fetched from the client's JWKS URL) or a client secret
(HTTP Basic or form post, where the profile allows it), opaque bearer tokens, and system scopes (v1
``.read`` and v2 ``.rs``). The profile adds a token-endpoint rate limit (athena, Medplum) and an
occasional bare 400 (Epic)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import heapq
import hmac
import math
import random
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ehrsim.config import ClientConfig
from ehrsim.instants import Clock
from ehrsim.profiles import Profile, get_profile

JwksFetcher = Callable[[str], Awaitable[dict[str, Any]]]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SIGNING_ALGS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME_S = 300
_SKEW_S = 5  # tolerated clock difference between client and server
_SCOPE_RE = re.compile(r"system/([A-Za-z]+|\*)\.(read|write|\*|c?r?u?d?s?)")
_V1_PERMS = {"read": "rs", "write": "cud", "*": "cruds"}


class TokenError(Exception):
    """An RFC 6749 §5.2 error answer from the token endpoint."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 401,
        *,
        headers: dict[str, str] | None = None,
        bare: bool = False,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}
        self.bare = bare  # answered with an empty body (Epic's flaky 400)


PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True, slots=True)
class RegisteredClient:
    client_id: str
    key: PublicKey | None
    algorithm: str | None  # of the registered key; with a JWKS URL the key's own
    scopes: tuple[str, ...]
    jwks_url: str | None = None
    secret: str | None = None

    @classmethod
    def from_config(cls, config: ClientConfig) -> RegisteredClient:
        extra = {"jwks_url": config.jwks_url, "secret": config.client_secret}
        if not config.has_key():
            return cls(config.client_id, None, None, tuple(config.scopes), **extra)
        key = load_pem_public_key(config.public_key_bytes())
        algorithm = _algorithm(key)
        if algorithm is None or not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise ValueError(f"client {config.client_id!r}: public key must be RSA or EC P-384")
        return cls(config.client_id, key, algorithm, tuple(config.scopes), **extra)


def _algorithm(key: object) -> str | None:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS384"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1):
        return "ES384"
    return None


@dataclass(frozen=True, slots=True)
class AccessToken:
    client_id: str
    scope: str
    expires_at: float
    perms: Mapping[str, str]  # resource type or "*" -> granted letters of "cruds"

    def allows(self, resource_type: str, perm: str) -> bool:
        return perm in self.perms.get(resource_type, "") or perm in self.perms.get("*", "")


def _parse_scope(scope: str) -> tuple[str, str] | None:
    m = _SCOPE_RE.fullmatch(scope)
    if m is None or not m.group(2):
        return None
    return m.group(1), _V1_PERMS.get(m.group(2), m.group(2))


def _covered(requested: tuple[str, str], registered: list[tuple[str, str]]) -> bool:
    rtype, perms = requested
    return any(t in ("*", rtype) and set(perms) <= set(p) for t, p in registered)


class TokenIssuer:
    def __init__(
        self,
        clients: list[ClientConfig],
        lifetime_s: float,
        clock: Clock,
        *,
        profile: Profile | None = None,
        seed: int = 0,
    ) -> None:
        self._clients = {c.client_id: RegisteredClient.from_config(c) for c in clients}
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._profile = profile or get_profile("generic")
        self._rng = random.Random(seed)  # noqa: S311 - simulated flakiness, not security
        self._recent_requests: deque[float] = deque()  # token requests of the last minute
        self._jwks_cache: dict[str, dict[str, Any]] = {}
        self._tokens: dict[str, AccessToken] = {}
        self._token_expiry: list[tuple[float, str]] = []  # heap, to forget expired tokens
        self._jtis: set[tuple[str, str]] = set()
        self._jti_expiry: list[tuple[float, str, str]] = []  # heap: jtis are remembered until their exp

    async def issue(
        self,
        form: Mapping[str, str],
        token_url: str,
        *,
        authorization: str | None = None,
        fetch_jwks: JwksFetcher | None = None,
    ) -> dict[str, object]:
        """Answer a token request; raises ``TokenError``."""
        now = self._clock()
        self._rate_limit(now)
        if self._rng.random() < self._profile.token_flaky_400_rate:
            raise TokenError("invalid_request", "", 400, bare=True)
        if form.get("grant_type") != "client_credentials":
            raise TokenError("unsupported_grant_type", "grant_type must be client_credentials", 400)
        self._forget_expired(now)
        basic = _basic_credentials(authorization)
        if basic is not None or "client_secret" in form:
            client = self._secret_client(form, basic)
        else:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise TokenError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}", 400)
            assertion = form.get("client_assertion")
            if not assertion:
                raise TokenError("invalid_request", "client_assertion is required", 400)
            client, jti, exp = await self._verify(assertion, token_url, now, fetch_jwks)
            self._jtis.add((client.client_id, jti))
            heapq.heappush(self._jti_expiry, (exp + _SKEW_S, client.client_id, jti))
        return self._grant(client, form, now)

    def expire_all(self) -> None:
        """Every issued token expires now (a fault)."""
        now = self._clock()
        self._tokens = {
            k: dataclasses.replace(t, expires_at=min(t.expires_at, now)) for k, t in self._tokens.items()
        }

    def revoke_all(self) -> None:
        """Every issued token is forgotten (a fault)."""
        self._tokens.clear()
        self._token_expiry.clear()

    def _rate_limit(self, now: float) -> None:
        limit = self._profile.token_requests_per_min
        if limit is None:
            return
        recent = self._recent_requests
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if len(recent) >= limit:
            retry_after = max(1, math.ceil(recent[0] + 60 - now))
            raise TokenError(
                "rate_limited",
                f"more than {limit} token requests per minute",
                429,
                headers={"Retry-After": str(retry_after)},
            )
        recent.append(now)

    def _secret_client(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> RegisteredClient:
        method = "client_secret_basic" if basic is not None else "client_secret_post"
        if method not in self._profile.auth_methods:
            raise TokenError("invalid_client", f"{method} is not supported by this server")
        client_id, secret = basic if basic is not None else (form.get("client_id", ""), form["client_secret"])
        client = self._clients.get(client_id)
        if client is None or client.secret is None or not hmac.compare_digest(client.secret, secret):
            raise TokenError("invalid_client", "client authentication failed")
        return client

    def _grant(self, client: RegisteredClient, form: Mapping[str, str], now: float) -> dict[str, object]:
        registered = [s for s in (_parse_scope(x) for x in client.scopes) if s is not None]
        requested = form.get("scope", "").split() or list(client.scopes)
        granted = [s for s in requested if (p := _parse_scope(s)) is not None and _covered(p, registered)]
        if not granted:
            raise TokenError("invalid_scope", "none of the requested scopes is granted to this client", 400)
        perms: dict[str, str] = {}
        for rtype, letters in (p for p in map(_parse_scope, granted) if p is not None):
            perms[rtype] = "".join(sorted(set(perms.get(rtype, "") + letters)))
        token = secrets.token_urlsafe(32)
        expires_at = now + self._lifetime_s
        scope = " ".join(granted)
        self._tokens[token] = AccessToken(client.client_id, scope, expires_at, perms)
        heapq.heappush(self._token_expiry, (expires_at, token))
        expires_in = max(1, math.ceil(self._lifetime_s))
        return {"access_token": token, "token_type": "bearer", "expires_in": expires_in, "scope": scope}

    def check(self, authorization: str | None) -> AccessToken | None:
        """The valid token named by an ``Authorization`` header, or ``None``."""
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = self._tokens.get(value.strip())
        return token if token is not None and token.expires_at > self._clock() else None

    async def _verify(
        self, assertion: str, token_url: str, now: float, fetch_jwks: JwksFetcher | None
    ) -> tuple[RegisteredClient, str, float]:
        """The client, ``jti`` and ``exp`` of a valid, unused assertion."""
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenError("invalid_client", "client_assertion is not a valid JWT") from None
        iss = unverified.get("iss")
        if not isinstance(iss, str) or iss != unverified.get("sub"):
            raise TokenError("invalid_client", "iss and sub must both be the client_id")
        client = self._clients.get(iss)
        if client is None:
            raise TokenError("invalid_client", "unknown client")
        if "private_key_jwt" not in self._profile.auth_methods:
            raise TokenError("invalid_client", "private_key_jwt is not supported by this server")
        key, algorithm = await self._assertion_key(client, header, fetch_jwks)
        if header.get("alg") != algorithm:
            raise TokenError("invalid_client", f"this client's assertions must be signed with {algorithm}")
        try:
            claims: dict[str, object] = jwt.decode(
                assertion,
                key=key,
                algorithms=[algorithm],
                audience=token_url,
                options={
                    "require": ["iss", "sub", "aud", "exp", "jti"],
                    "verify_exp": False,  # checked below against the injected clock
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise TokenError("invalid_client", "aud must be the token endpoint URL") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError("invalid_client", f"the {exc.claim} claim is required") from None
        except jwt.PyJWTError:
            raise TokenError("invalid_client", "client_assertion signature is invalid") from None
        jti, exp = claims["jti"], _check_times(claims, now)
        if not isinstance(jti, str) or not jti:
            raise TokenError("invalid_client", "jti must be a non-empty string")
        if (client.client_id, jti) in self._jtis:
            raise TokenError("invalid_client", "jti has already been used")
        return client, jti, exp

    async def _assertion_key(
        self, client: RegisteredClient, header: dict[str, Any], fetch_jwks: JwksFetcher | None
    ) -> tuple[Any, str]:
        """The registered key, else the key with the header's ``kid`` from the client's JWKS URL."""
        if client.key is not None and client.algorithm is not None:
            return client.key, client.algorithm
        if client.jwks_url is None or fetch_jwks is None:
            raise TokenError("invalid_client", "this client has no key for private_key_jwt")
        kid = header.get("kid")
        for refresh in (False, True):
            jwks = self._jwks_cache.get(client.jwks_url)
            if jwks is None or refresh:
                try:
                    jwks = await fetch_jwks(client.jwks_url)
                except Exception as exc:  # noqa: BLE001 - any failure to fetch is the client's problem
                    raise TokenError("invalid_client", f"the JWKS URL could not be read ({exc})") from None
                self._jwks_cache[client.jwks_url] = jwks
            for jwk in jwks.get("keys", []):
                if isinstance(jwk, dict) and jwk.get("kid") == kid:
                    try:
                        key = jwt.PyJWK(jwk).key
                    except jwt.PyJWTError:
                        raise TokenError("invalid_client", "the JWKS key is not usable") from None
                    algorithm = _algorithm(key)
                    if algorithm is None:
                        raise TokenError("invalid_client", "JWKS keys must be RSA or EC P-384")
                    return key, algorithm
        raise TokenError("invalid_client", f"no key with kid {kid!r} in the client's JWKS")

    def _forget_expired(self, now: float) -> None:
        while self._jti_expiry and self._jti_expiry[0][0] < now:
            _, client_id, jti = heapq.heappop(self._jti_expiry)
            self._jtis.discard((client_id, jti))
        while self._token_expiry and self._token_expiry[0][0] <= now:
            self._tokens.pop(heapq.heappop(self._token_expiry)[1], None)


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, sep, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise TokenError("invalid_client", "malformed Basic credentials") from None
    if not sep:
        raise TokenError("invalid_client", "malformed Basic credentials")
    return client_id, secret


def _check_times(claims: dict[str, object], now: float) -> float:
    exp, nbf = claims["exp"], claims.get("nbf")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise TokenError("invalid_client", "exp must be a number")
    if exp <= now - _SKEW_S:
        raise TokenError("invalid_client", "client_assertion has expired")
    if exp > now + MAX_ASSERTION_LIFETIME_S + _SKEW_S:
        raise TokenError("invalid_client", f"exp must be at most {MAX_ASSERTION_LIFETIME_S} s in the future")
    if isinstance(nbf, int | float) and nbf > now + _SKEW_S:
        raise TokenError("invalid_client", "client_assertion is not yet valid (nbf)")
    return float(exp)
