"""Webhook signatures: HMAC-SHA256 over ``timestamp + "." + body``.

Every delivery carries two headers (docs/api.md "Verifying a delivery")::

    Shopfloor-Timestamp: 1764000000            (unix seconds when this attempt was sent)
    Shopfloor-Signature: v1=<64 hex digits>    (HMAC-SHA256(secret, f"{timestamp}.{body}"))

The timestamp is signed too, so a captured delivery cannot be replayed later with a new
one; a receiver rejects timestamps too far from its own clock. ``v1=`` names the scheme;
more ``v1=`` values (comma-separated) may appear while a secret is rotated.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Final

SIGNATURE_HEADER: Final = "Shopfloor-Signature"
TIMESTAMP_HEADER: Final = "Shopfloor-Timestamp"
EVENT_ID_HEADER: Final = "Shopfloor-Event-Id"
EVENT_TYPE_HEADER: Final = "Shopfloor-Event"
DELIVERY_HEADER: Final = "Shopfloor-Delivery"
SCHEME: Final = "v1"
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a prefix, not a secret
DEFAULT_TOLERANCE_S: Final = 300
_TIMESTAMP: Final = re.compile(r"[0-9]{1,15}")


def new_secret() -> str:
    """A fresh signing secret (256 random bits), shown to the subscriber once."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp}.{body}"`` under ``secret``."""
    return _mac(secret, str(timestamp), body)


def _mac(secret: str, timestamp: str, body: bytes) -> str:
    message = timestamp.encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"{SCHEME}={sign(secret, timestamp, body)}"


def verify(
    secret: str,
    body: bytes,
    *,
    timestamp: str | None,
    signature: str | None,
    now_s: int,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """True when ``signature`` (a header value) signs ``body`` at ``timestamp`` under
    ``secret`` and the timestamp is within ``tolerance_s`` of ``now_s``. A missing or
    malformed header is not verified (False); this never raises for what a sender sent."""
    if not isinstance(timestamp, str) or not isinstance(signature, str):
        return False
    if _TIMESTAMP.fullmatch(timestamp) is None:
        return False
    if abs(now_s - int(timestamp)) > tolerance_s:
        return False
    expected = _mac(secret, timestamp, body).encode()  # over the header as sent
    ok = False
    for part in signature.split(","):
        scheme, _, value = part.strip().partition("=")
        # bytes, not str: compare_digest refuses a str with non-ASCII characters
        if scheme == SCHEME and hmac.compare_digest(value.encode(errors="replace"), expected):
            ok = True
    return ok
