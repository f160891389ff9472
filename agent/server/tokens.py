"""HS256 JSON Web Tokens with the standard library (pure: the clock is passed in).

The local server signs tokens exactly like a JWT library would (header ``{"alg": "HS256", "typ": "JWT"}``,
base64url without padding), so clients see realistic ``eyJ...`` bearer tokens and can decode the ``exp`` claim.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass


class TokenInvalid(Exception):
    """The token is malformed, badly signed or expired (the message says which; it never contains the token)."""


@dataclass(frozen=True)
class TokenClaims:
    uid: str
    issued_at: float
    """Unix seconds."""
    expires_at: float
    """Unix seconds."""


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.urlsafe_b64decode(padded.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise TokenInvalid("malformed token") from exc


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def issue(secret: bytes, uid: str, now: float, ttl_s: float) -> str:
    """A signed token for ``uid`` valid from ``now`` for ``ttl_s`` seconds."""
    header = _b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"sub": uid, "iat": now, "exp": now + ttl_s, "jti": secrets.token_hex(8)}
    payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = _b64encode(hmac.new(secret, signing_input, hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


def verify(secret: bytes, token: str, now: float, not_before: float = 0.0) -> TokenClaims:
    """The claims of a valid token; :class:`TokenInvalid` otherwise.

    ``not_before``: tokens issued before this unix time are treated as expired (the "expire all tokens" knob).
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenInvalid("malformed token")
    header_b64, payload_b64, signature_b64 = parts
    expected = hmac.new(secret, f"{header_b64}.{payload_b64}".encode("ascii", "replace"), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _b64decode(signature_b64)):
        raise TokenInvalid("bad token signature")
    try:
        header = json.loads(_b64decode(header_b64))
        claims = json.loads(_b64decode(payload_b64))
        uid, iat, exp = str(claims["sub"]), float(claims["iat"]), float(claims["exp"])
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenInvalid("malformed token") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise TokenInvalid("unsupported token algorithm")
    if now >= exp or iat < not_before:
        raise TokenInvalid("token expired")
    return TokenClaims(uid=uid, issued_at=iat, expires_at=exp)
