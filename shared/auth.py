"""Identity shared by all services: roles, API-key format, and short-lived signed tokens.

Keys are issued and revoked in one place (the gateway's table, via `blonet keys`). A caller
exchanges its API key at the gateway for a token signed with Ed25519 (JWT, alg EdDSA); the
other services verify it with the public key alone, without reading the gateway's tables.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.secretfile import create_secret
from shared.settings import Settings, get_settings

KEY_PREFIX = "blo"
ISSUER = "blonet-gateway"


class Role(StrEnum):
    SUBMIT = "submit"
    RECEIVE = "receive"
    OPERATOR = "operator"
    AUDITOR = "auditor"


@dataclass(frozen=True)
class Principal:
    key_id: str
    agency: str
    roles: frozenset[Role]


def new_api_key() -> tuple[str, str]:
    """Return (key id, full secret key); only the key's hash is ever stored."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def split_api_key(key: str) -> str | None:
    """Return the key id of a well-formed key, else None."""
    parts = key.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == KEY_PREFIX and parts[1] else None


def hash_api_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough (no dictionary to attack).
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_signing_key(settings: Settings) -> None:
    """Create the development token-signing key pair if it does not exist yet."""
    if settings.token_private_key_file.exists():
        return
    if settings.environment == "production":
        raise RuntimeError(f"token signing key missing: {settings.token_private_key_file}")
    key = Ed25519PrivateKey.generate()
    try:
        create_secret(settings.token_private_key_file, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    except FileExistsError:
        return  # another process made it first; its public key follows
    settings.token_public_key_file.parent.mkdir(parents=True, exist_ok=True)
    settings.token_public_key_file.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@lru_cache
def _read(path: Path) -> bytes:
    return path.read_bytes()


def issue_token(settings: Settings, principal: Principal, *, ttl: int | None = None, audience: str | None = None) -> str:
    """Sign a token for `principal`. An `audience` token (e.g. the console's session) is refused by
    every verifier that does not ask for that audience, so it cannot be replayed as an API token."""
    now = int(time.time())
    claims = {
        "iss": ISSUER, "sub": principal.key_id, "agency": principal.agency,
        "roles": sorted(principal.roles), "iat": now, "exp": now + (ttl or settings.token_ttl_seconds),
        **({"aud": audience} if audience else {}),
    }
    return jwt.encode(claims, _read(settings.token_private_key_file), algorithm="EdDSA")


def verify_token(settings: Settings, token: str, audience: str | None = None) -> Principal:
    """Return the token's principal; raise jwt.InvalidTokenError if it is bad or expired."""
    claims = jwt.decode(
        token, _read(settings.token_public_key_file), algorithms=["EdDSA"], issuer=ISSUER, audience=audience,
        options={"require": ["exp", "sub", "iss"]},
    )
    return Principal(claims["sub"], claims["agency"], frozenset(Role(r) for r in claims["roles"]))


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


_bearer = HTTPBearer(auto_error=False)


def require_token_role(*roles: Role):
    """FastAPI dependency for the internal services: a valid gateway token holding one of `roles`."""

    async def dependency(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
        if creds is None:
            raise unauthorized("missing bearer token")
        try:
            principal = verify_token(get_settings(), creds.credentials)
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"invalid token: {exc}") from None
        if not principal.roles & set(roles):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"needs role {' or '.join(roles)}")
        return principal

    return dependency
