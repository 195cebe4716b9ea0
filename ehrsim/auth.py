"""SMART Backend Services auth of one facility: ``client_credentials`` with a ``private_key_jwt``
assertion (RS384 / ES384), opaque bearer tokens, and system scopes (v1 ``.read`` and v2 ``.rs``)."""

from __future__ import annotations

import heapq
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ehrsim.config import ClientConfig
from ehrsim.instants import Clock

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SIGNING_ALGS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME_S = 300
_SKEW_S = 5  # tolerated clock difference between client and server
_SCOPE_RE = re.compile(r"system/([A-Za-z]+|\*)\.(read|write|\*|c?r?u?d?s?)")
_V1_PERMS = {"read": "rs", "write": "cud", "*": "cruds"}


class TokenError(Exception):
    """An RFC 6749 §5.2 error answer from the token endpoint."""

    def __init__(self, error: str, description: str, status: int = 401) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True, slots=True)
class RegisteredClient:
    client_id: str
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    algorithm: str
    scopes: tuple[str, ...]

    @classmethod
    def from_config(cls, config: ClientConfig) -> RegisteredClient:
        key = load_pem_public_key(config.public_key_bytes())
        if isinstance(key, rsa.RSAPublicKey):
            return cls(config.client_id, key, "RS384", tuple(config.scopes))
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1):
            return cls(config.client_id, key, "ES384", tuple(config.scopes))
        raise ValueError(f"client {config.client_id!r}: public key must be RSA or EC P-384")


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
    def __init__(self, clients: list[ClientConfig], lifetime_s: int, clock: Clock) -> None:
        self._clients = {c.client_id: RegisteredClient.from_config(c) for c in clients}
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._tokens: dict[str, AccessToken] = {}
        self._token_expiry: list[tuple[float, str]] = []  # heap, to forget expired tokens
        self._jtis: set[tuple[str, str]] = set()
        self._jti_expiry: list[tuple[float, str, str]] = []  # heap: jtis are remembered until their exp

    def issue(self, form: Mapping[str, str], token_url: str) -> dict[str, object]:
        """Answer a token request; raises ``TokenError``."""
        if form.get("grant_type") != "client_credentials":
            raise TokenError("unsupported_grant_type", "grant_type must be client_credentials", 400)
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise TokenError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}", 400)
        assertion = form.get("client_assertion")
        if not assertion:
            raise TokenError("invalid_request", "client_assertion is required", 400)
        now = self._clock()
        self._forget_expired(now)
        client, jti, exp = self._verify(assertion, token_url, now)
        registered = [s for s in (_parse_scope(x) for x in client.scopes) if s is not None]
        requested = form.get("scope", "").split() or list(client.scopes)
        granted = [s for s in requested if (p := _parse_scope(s)) is not None and _covered(p, registered)]
        if not granted:
            raise TokenError("invalid_scope", "none of the requested scopes is granted to this client", 400)
        perms: dict[str, str] = {}
        for rtype, letters in (p for p in map(_parse_scope, granted) if p is not None):
            perms[rtype] = "".join(sorted(set(perms.get(rtype, "") + letters)))
        self._jtis.add((client.client_id, jti))
        heapq.heappush(self._jti_expiry, (exp + _SKEW_S, client.client_id, jti))
        token = secrets.token_urlsafe(32)
        expires_at = now + self._lifetime_s
        scope = " ".join(granted)
        self._tokens[token] = AccessToken(client.client_id, scope, expires_at, perms)
        heapq.heappush(self._token_expiry, (expires_at, token))
        return {"access_token": token, "token_type": "bearer", "expires_in": self._lifetime_s, "scope": scope}

    def check(self, authorization: str | None) -> AccessToken | None:
        """The valid token named by an ``Authorization`` header, or ``None``."""
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = self._tokens.get(value.strip())
        return token if token is not None and token.expires_at > self._clock() else None

    def _verify(self, assertion: str, token_url: str, now: float) -> tuple[RegisteredClient, str, float]:
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
        if header.get("alg") != client.algorithm:
            raise TokenError(
                "invalid_client", f"this client's assertions must be signed with {client.algorithm}"
            )
        try:
            claims: dict[str, object] = jwt.decode(
                assertion,
                key=client.key,
                algorithms=[client.algorithm],
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

    def _forget_expired(self, now: float) -> None:
        while self._jti_expiry and self._jti_expiry[0][0] < now:
            _, client_id, jti = heapq.heappop(self._jti_expiry)
            self._jtis.discard((client_id, jti))
        while self._token_expiry and self._token_expiry[0][0] <= now:
            self._tokens.pop(heapq.heappop(self._token_expiry)[1], None)


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
