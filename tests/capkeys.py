"""Signing keys and self-signed certificates the CAP signature tests generate (never stored in the repository)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from shared.capsig import NodeKey

NOW = datetime.now(timezone.utc)


def make_key(name: str, *, valid_from: datetime | None = None, valid_to: datetime | None = None,
             elliptic: bool = False) -> NodeKey:
    """A fresh key and a self-signed certificate for `name`, valid from a day ago for a year unless told."""
    key = ec.generate_private_key(ec.SECP256R1()) if elliptic else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "BLOnet tests")])
    start = valid_from or NOW - timedelta(days=1)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(valid_to or start + timedelta(days=365)).sign(key, hashes.SHA256()))
    return NodeKey(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
                   cert.public_bytes(serialization.Encoding.PEM))
