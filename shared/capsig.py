"""XML signatures on CAP messages (enveloped XML-DSig), both ways, with `signxml`.

Incoming: `verify` checks a message's signature against the certificates the directory registers
for its sender agency, and says which of four states it is in (docs/api.md, "Signed CAP").
Outgoing: `sign` adds the node's enveloped signature to a CAP document BLOnet renders.
Pure apart from `NodeKey.load`, which reads the node's key files; the clock is an argument.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree
from signxml import DigestAlgorithm, SignatureConfiguration, SignatureMethod, XMLSigner, XMLVerifier, methods
from signxml.algorithms import CanonicalizationMethod
from signxml.exceptions import InvalidDigest, InvalidInput, InvalidSignature

from shared.events import CapSignature, SignatureState

DSIG = "http://www.w3.org/2000/09/xmldsig#"


def load_certificates(pem: str) -> list[x509.Certificate]:
    """Parse one or more PEM certificates; ValueError if there are none or one is malformed."""
    return x509.load_pem_x509_certificates(pem.encode())


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER bytes, in hex: how status and audit name the signer."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _parse(data: bytes) -> etree._Element:
    return etree.fromstring(data, etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True))


def _embedded(signature: etree._Element) -> x509.Certificate | None:
    found = signature.find(f"{{{DSIG}}}KeyInfo/{{{DSIG}}}X509Data/{{{DSIG}}}X509Certificate")
    if found is None or not (found.text or "").strip():
        return None
    try:
        return x509.load_pem_x509_certificate(
            b"-----BEGIN CERTIFICATE-----\n" + "".join(found.text.split()).encode() + b"\n-----END CERTIFICATE-----\n")
    except ValueError:
        return None


def verify(data: bytes, certificates: tuple[str, ...], at: datetime) -> CapSignature:
    """Return the state of the CAP message's enveloped signature, checked against `certificates` (PEM).

    `verified`: a registered certificate, valid at `at`, signed the whole message as received.
    `invalid`: a registered certificate's key signed it, but the content changed since, the
    certificate is not valid at `at`, or the signature uses what BLOnet does not accept (SHA-1,
    more than one signature, a signature over part of the message).
    `unknown_signer`: none of the registered certificates (if any) holds the signing key.
    `unsigned`: no signature.
    """
    root = _parse(data)
    signatures = root.findall(f"{{{DSIG}}}Signature")
    if not signatures:
        if root.find(f".//{{{DSIG}}}Signature") is not None:
            return CapSignature(state=SignatureState.INVALID, reason="the signature is not a child of <alert>: it does not cover the message")
        return CapSignature(state=SignatureState.UNSIGNED)
    if len(signatures) > 1:
        return CapSignature(state=SignatureState.INVALID, reason="more than one signature on the message")
    if not certificates:
        return CapSignature(state=SignatureState.UNKNOWN_SIGNER, reason="no signing certificate is registered for the sender agency")
    registered = [c for pem in certificates for c in load_certificates(pem)]
    method = signatures[0].find(f"{{{DSIG}}}SignedInfo/{{{DSIG}}}SignatureMethod")
    algorithm = (method.get("Algorithm") or "") if method is not None else ""
    for cert in registered:
        if not _fits(cert, algorithm):  # an RSA certificate cannot have made an ECDSA signature, nor the reverse
            continue
        # Check the key first, at a time the certificate was valid; its validity at `at` comes after.
        config = SignatureConfiguration(location="./", verification_time=cert.not_valid_before_utc)
        try:
            XMLVerifier().verify(data, x509_cert=cert, expect_config=config)
        except InvalidDigest:
            return CapSignature(state=SignatureState.INVALID, certificate=fingerprint(cert),
                                reason="the message was changed after it was signed (digest mismatch)")
        except InvalidSignature:  # not this key (or a certificate signxml refuses): try the next one
            continue
        except (InvalidInput, etree.LxmlError, ValueError) as exc:  # SHA-1, a malformed or schema-invalid signature
            return CapSignature(state=SignatureState.INVALID, reason=f"a signature BLOnet does not accept: {str(exc)[:300]}")
        reference = signatures[0].find(f"{{{DSIG}}}SignedInfo/{{{DSIG}}}Reference")
        if reference is None or reference.get("URI") != "":
            return CapSignature(state=SignatureState.INVALID, certificate=fingerprint(cert),
                                reason="the signature covers part of the message only (its reference URI is not \"\")")
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            return CapSignature(state=SignatureState.INVALID, certificate=fingerprint(cert),
                                reason=f"the signing certificate is valid from {cert.not_valid_before_utc.isoformat()} to "
                                       f"{cert.not_valid_after_utc.isoformat()}, not at {at.isoformat()}")
        return CapSignature(state=SignatureState.VERIFIED, certificate=fingerprint(cert),
                            signer=cert.subject.rfc4514_string()[:200])
    embedded = _embedded(signatures[0])
    if embedded is not None and embedded in registered:
        return CapSignature(state=SignatureState.INVALID, certificate=fingerprint(embedded),
                            reason="the signature does not match the registered certificate it names (altered signature)")
    return CapSignature(state=SignatureState.UNKNOWN_SIGNER,
                        reason="signed with a key that none of the sender agency's registered certificates holds")


def _fits(cert: x509.Certificate, algorithm: str) -> bool:
    elliptic = isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    return elliptic == ("#ecdsa-" in algorithm) or "#hmac-" in algorithm


@dataclass(frozen=True)
class NodeKey:
    """The node's CAP signing key and its certificate (PEM), which receivers verify against."""

    key_pem: bytes
    certificate_pem: bytes

    @classmethod
    def load(cls, key_file: Path | None, certificate_file: Path | None) -> NodeKey | None:
        """Read the key files; None when either is not configured (outgoing CAP is then unsigned)."""
        if key_file is None or certificate_file is None:
            return None
        return cls(key_file.read_bytes(), certificate_file.read_bytes())

    def sign(self, data: bytes) -> bytes:
        """Return the CAP document with the node's enveloped signature over all of it (SHA-256, exclusive c14n)."""
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        method = SignatureMethod.ECDSA_SHA256 if isinstance(key, ec.EllipticCurvePrivateKey) else SignatureMethod.RSA_SHA256
        signer = XMLSigner(method=methods.enveloped, signature_algorithm=method, digest_algorithm=DigestAlgorithm.SHA256,
                           c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0)
        signed = signer.sign(_parse(data), key=key, cert=self.certificate_pem.decode())
        return etree.tostring(signed, xml_declaration=True, encoding="UTF-8")
