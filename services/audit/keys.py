"""The checkpoint signing key: where it lives, and a development key made on first start."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from shared.checkpoint import SignerKey
from shared.secretfile import create_secret
from shared.settings import Settings

log = logging.getLogger(__name__)


def key_file(settings: Settings) -> Path:
    return settings.audit_signing_key_file or settings.token_private_key_file.parent / "audit-checkpoint.key"


def vkey_file(settings: Settings) -> Path:
    """Where the log's public verifier key is published for local readers (e.g. the console)."""
    return settings.audit_verifier_key_file or key_file(settings).with_suffix(".vkey")


def origin(settings: Settings) -> str:
    return settings.audit_origin or f"{settings.node_id}/audit"


def write_new_key(path: Path, name: str) -> SignerKey:
    """Write a new signer key to `path` (mode 0600); refuse to replace an existing key."""
    key = SignerKey.generate(name)
    create_secret(path, f"{key}\n".encode())  # 0600 from the start, exclusive: two instances keep one key
    return key


def load_signing_key(settings: Settings) -> SignerKey:
    """Return the log's signing key; outside production, create it on first use."""
    path, name = key_file(settings), origin(settings)
    if not path.exists():
        if settings.environment == "production":
            raise RuntimeError(f"checkpoint signing key missing: {path} (create it with `blonet audit keygen`)")
        try:
            write_new_key(path, name)
        except FileExistsError:
            pass  # another instance made it first
    key = SignerKey.parse(path.read_text())
    if key.name != name:
        raise RuntimeError(f"the signing key {path} is for {key.name!r} but the log's origin is {name!r} "
                           "(BLONET_AUDIT_ORIGIN)")
    publish_verifier(settings, key)
    return key


def publish_verifier(settings: Settings, key: SignerKey) -> None:
    """Write the public verifier key where readers that must not see the signing key can find it."""
    path, text = vkey_file(settings), f"{key.verifier}\n"
    try:
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(text)
            tmp.replace(path)
    except OSError as exc:  # a read-only place: readers then need BLONET_AUDIT_VERIFIER_KEY
        log.warning("could not publish the verifier key at %s: %s", path, exc)
