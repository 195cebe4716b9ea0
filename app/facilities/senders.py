"""Sender authentication for the receiver, per facility, before any parsing (WebhookConfig.method).

``SenderCheck.check`` answers None when the sender is authentic, else a reason slug for the log line
and the counter (the 401 itself names no reason: it must not tell a wrong secret from an unknown
facility). A shared secret's auth-scheme (``Bearer``) is case-insensitive (RFC 9110 §11.1). Every
comparison is constant-time; any of the live secrets (the current one and, while rotating, the
previous one) is accepted. Secrets are resolved when the facility is loaded and kept in memory only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from app.errors import SecretInvalid, SecretMissing
from app.facilities.schemas import WebhookConfig, WebhookMethod
from app.facilities.secrets import resolve_secret

WHSEC_PREFIX = "whsec_"
MAX_TIMESTAMP_DIGITS = 12  # Unix seconds until the year 33658; more is no timestamp (nor an int to parse)


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def standard_webhooks_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: ``whsec_<base64>`` decoded, else the raw bytes."""
    if secret.startswith(WHSEC_PREFIX):
        try:
            return base64.b64decode(secret[len(WHSEC_PREFIX) :], validate=True)
        except binascii.Error as exc:
            raise SecretInvalid("whsec_ secret is not base64") from exc
    return secret.encode()


def standard_webhooks_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    """The base64 HMAC-SHA256 of ``{msg_id}.{timestamp}.{body}``: the ``v1,`` signature both of what the
    receiver verifies and of what the alert webhook sink (``app.alerts.sinks``) sends."""
    return base64.b64encode(_hmac_sha256(key, f"{msg_id}.{timestamp}.".encode() + body))


@dataclass(frozen=True)
class MessageKey:
    """A sender's message id (hashed) and the Unix time its replay window closes."""

    sha256: str
    expires_at: int


@dataclass(frozen=True)
class SenderCheck:
    method: WebhookMethod
    header: str  # lower-case
    keys: tuple[bytes, ...]  # the expected credentials (shared-secret) or the HMAC keys
    tolerance_s: int = 300
    # shared-secret: the auth-scheme before the credentials (``Bearer``), matched case-insensitively
    # (RFC 9110 §11.1), lower-case here; None when the header carries the secret alone (an API key).
    scheme: str | None = None
    # Signatures cover the raw body: the check runs after reading it (bounded), before parsing. A field,
    # not a property: read on every request, decided once when the facility is loaded.
    needs_body: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs_body", self.method != "shared-secret")

    def check(self, headers: Mapping[str, str], body: bytes, now: float) -> str | None:  # noqa: PLR0911 - a reason per failure
        if self.method == "shared-secret":
            value = headers.get(self.header)
            if value is None:
                return "missing_credentials"
            scheme_ok, credentials = self._credentials(value)
            # Compared even when the scheme is wrong: the time taken says nothing about which part failed.
            matched = _any_equal(credentials.encode(), self.keys)
            return None if matched and scheme_ok else "wrong_secret"
        if self.method == "standard-webhooks":
            return self._standard_webhooks(headers, body, now)
        value = headers.get(self.header)
        if value is None:
            return "missing_signature"
        value = value.strip()
        if self.method == "hub-signature":
            algorithm, _, value = value.partition("=")
            if algorithm.strip().lower() != "sha256":
                return "unsupported_signature"
        try:
            given = bytes.fromhex(value.strip())
        except ValueError:
            return "bad_signature"
        return None if _any_equal(given, [_hmac_sha256(k, body) for k in self.keys]) else "bad_signature"

    def message_key(self, headers: Mapping[str, str]) -> MessageKey | None:
        """For Standard Webhooks, what identifies an authenticated message: the sha256 of its
        ``webhook-id`` (fixed length, whatever the sender sends) and the end of its replay window.
        Call only after ``check`` passed. None for methods without message ids."""
        if self.method != "standard-webhooks":
            return None
        msg_id, stamp = headers["webhook-id"], int(headers["webhook-timestamp"].strip())
        digest = hashlib.sha256(msg_id.encode("utf-8", "surrogateescape")).hexdigest()
        return MessageKey(digest, stamp + self.tolerance_s)

    def _credentials(self, value: str) -> tuple[bool, str]:
        """(whether the scheme matches, the credentials) of a shared-secret header value."""
        value = value.strip()
        if self.scheme is None:
            return True, value
        scheme, _, credentials = value.partition(" ")
        return scheme.lower() == self.scheme, credentials.lstrip(" ")

    def _standard_webhooks(self, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
        msg_id, stamp = headers.get("webhook-id"), headers.get("webhook-timestamp")
        signatures = headers.get(self.header)
        if not msg_id or not stamp or not signatures:
            return "missing_signature"
        stamp = stamp.strip()
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= MAX_TIMESTAMP_DIGITS):
            return "bad_timestamp"
        if abs(now - int(stamp)) > self.tolerance_s:
            return "timestamp_outside_window"
        expected = [standard_webhooks_signature(k, msg_id, stamp, body) for k in self.keys]
        for candidate in signatures.split():
            version, _, signature = candidate.partition(",")
            if version == "v1" and _any_equal(signature.encode(), expected):
                return None
        return "bad_signature"


def _any_equal(given: bytes, expected: list[bytes] | tuple[bytes, ...]) -> bool:
    # Compare against every key, not stopping at the first match: timing says nothing about which.
    matched = False
    for candidate in expected:
        matched |= hmac.compare_digest(given, candidate)
    return matched


def sender_check(webhook: WebhookConfig) -> SenderCheck:
    """Resolve the webhook's secrets into a check. Raises ConfigurationError when a secret is missing."""
    refs = [webhook.secret] + ([webhook.previous_secret] if webhook.previous_secret else [])
    secrets = []
    for ref in refs:
        secret = resolve_secret(ref).strip()
        if not secret:
            raise SecretMissing(f"webhook secret {ref.describe()} is empty")
        secrets.append(secret)
    if webhook.method == "standard-webhooks":
        keys = tuple(standard_webhooks_key(s) for s in secrets)
    else:
        keys = tuple(s.encode() for s in secrets)
    scheme = None
    if webhook.method == "shared-secret" and webhook.scheme and webhook.scheme.strip():
        scheme = webhook.scheme.strip().lower()
    return SenderCheck(webhook.method, webhook.effective_header.lower(), keys, webhook.tolerance_s, scheme)


# What an unknown facility is checked against, so that answering it costs what a wrong secret does
# (a header-only check, as for shared-secret, the default method): the same status, body and work.
UNKNOWN_SENDER = SenderCheck("shared-secret", "authorization", (b"\x00" * 32,), scheme="bearer")
