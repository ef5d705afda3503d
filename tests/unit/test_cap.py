"""CAP 1.2 mapping: real-world shapes in, schema-valid CAP out, and render → parse round trips."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from demo.scenario import SCENARIO
from shared.alerts import Alert, Category, Certainty, Handling, MsgType, Severity, Status, Tlp, Urgency
from shared.cap import MAX_AREAS, MAX_INFO, CapError, cap_alert_id, format_time, parse_cap, render_cap, schema

SENT = datetime(2026, 5, 10, 9, 30, tzinfo=timezone(timedelta(hours=6)))


def cap(body: str, *, prefix: str = "", head: str = "", encoding: str = "UTF-8", tail: str = "") -> bytes:
    """Return a CAP document around `body` (the elements after <scope>), optionally prefixed/encoded."""
    p = f"{prefix}:" if prefix else ""
    xmlns = f"xmlns{':' + prefix if prefix else ''}"
    text = (
        f'<?xml version="1.0" encoding="{encoding}"?>{head}'
        f'<{p}alert {xmlns}="urn:oasis:names:tc:emergency:cap:1.2">'
        f"<{p}identifier>KG-SBS-2026-0042</{p}identifier><{p}sender>kg-sbs@sbs.gov.kg</{p}sender>"
        f"<{p}sent>2026-05-10T09:30:00+06:00</{p}sent><{p}status>Exercise</{p}status>"
        + body.replace("<", f"<{p}").replace(f"<{p}/", f"</{p}") + tail + f"</{p}alert>"
    )
    return text.encode(encoding)


INFO = (
    "<info><language>ru</language><category>Security</category><event>Наркотрафик</event>"
    "<urgency>Future</urgency><severity>Severe</severity><certainty>Likely</certainty>"
    "<eventCode><valueName>blonet:category</valueName><value>drugs</value></eventCode>"
    "<expires>2030-05-20T23:59:59+06:00</expires>"
    "<headline>Риск наркотрафика через Достук</headline><description>Ожидается попытка.</description>"
    "<parameter><valueName>blonet:tlp</valueName><value>TLP:AMBER+STRICT</value></parameter>"
    "<area><areaDesc>Достук</areaDesc><geocode><valueName>blonet:post</valueName><value>dostuk</value></geocode></area>"
    "</info>"
)
ALERT = "<msgType>Alert</msgType><scope>Restricted</scope><restriction>law enforcement only</restriction>" + INFO


def test_plain_alert_maps_onto_the_model():
    m = parse_cap(cap(ALERT))
    a = m.alert
    assert (a.sender_agency, a.status, a.msg_type, a.category, a.tlp) == ("kg-sbs", Status.EXERCISE, MsgType.ALERT, Category.DRUGS, Tlp.AMBER_STRICT)
    assert (a.urgency, a.severity, a.certainty, a.language) == (Urgency.FUTURE, Severity.SEVERE, Certainty.LIKELY, "ru")
    assert a.location.post == "dostuk" and a.headline.startswith("Риск")
    assert (m.sender, m.identifier, m.sent, m.signed) == ("kg-sbs@sbs.gov.kg", "KG-SBS-2026-0042", SENT, False)


def test_the_alert_id_is_derived_from_the_cap_triple():
    first, again = parse_cap(cap(ALERT)), parse_cap(cap(ALERT, prefix="cap"))
    assert first.alert_id == again.alert_id == cap_alert_id("kg-sbs@sbs.gov.kg", "KG-SBS-2026-0042", SENT)
    assert first.alert_id.version == 7
    assert cap_alert_id("x", "y", SENT) != first.alert_id
    own = UUID("0190a000-0000-7000-8000-000000000001")
    assert cap_alert_id("anyone", f"urn:uuid:{own}", SENT) == own, "a reference to an alert BLOnet rendered"
    hashed = cap_alert_id("anyone", f"urn:uuid:{own}", SENT, "kg-sbs", blonet_ids=False)
    assert hashed != own and hashed == cap_alert_id("anyone", f"urn:uuid:{own}", SENT, "kg-sbs", blonet_ids=False)


def test_a_sender_is_the_agency_the_directory_lists_it_for_else_its_local_part():
    long_sender = "regional-warning-centre-" + "x" * 50 + "@example.org"  # valid CAP: the standard sets no length
    data = cap(ALERT).replace(b"kg-sbs@sbs.gov.kg", long_sender.encode())
    with pytest.raises(CapError) as err:
        parse_cap(data)
    assert err.value.code == "cap_unknown_sender" and "cap_senders" in str(err.value)
    assert parse_cap(data, {long_sender: "kg-sbs"}).alert.sender_agency == "kg-sbs"
    assert parse_cap(cap(ALERT), {"other@x": "uz-sbs"}).alert.sender_agency == "kg-sbs", "an unlisted sender: its local part"


@pytest.mark.parametrize("encoding", ["UTF-8", "UTF-16", "windows-1251", "KOI8-R", "ISO-8859-5"])
def test_any_declared_encoding_is_read(encoding):
    assert parse_cap(cap(ALERT, encoding=encoding)).alert.headline == "Риск наркотрафика через Достук"


def test_bytes_invalid_in_the_declared_encoding_are_refused():
    data = cap(ALERT).replace("Достук".encode(), b"\xff\xfe\xfd", 1)
    with pytest.raises(CapError) as err:
        parse_cap(data)
    assert err.value.code == "xml_malformed"


def test_namespace_prefixes_are_accepted():
    assert parse_cap(cap(ALERT, prefix="cap")).alert.category is Category.DRUGS


def test_a_signature_is_noted_and_left_alone():
    signature = (
        '<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo/><ds:SignatureValue>AAAA'
        "</ds:SignatureValue></ds:Signature>"
    )
    assert parse_cap(cap(ALERT, tail=signature)).signed is True


def test_cancel_without_info_and_references():
    body = "<msgType>Cancel</msgType><scope>Public</scope><note>withdrawn</note><references>kg-sbs@sbs.gov.kg,KG-SBS-2026-0042,2026-05-10T09:30:00+06:00</references>"
    m = parse_cap(cap(body))
    assert m.alert.msg_type is MsgType.CANCEL and m.alert.headline == "withdrawn"
    assert m.alert.references == [cap_alert_id("kg-sbs@sbs.gov.kg", "KG-SBS-2026-0042", SENT)]
    assert m.references == ["kg-sbs@sbs.gov.kg,KG-SBS-2026-0042,2026-05-10T09:30:00+06:00"]


def test_multilingual_info_blocks_become_translations():
    english = INFO.replace("<language>ru</language>", "<language>en-US</language>").replace(
        "Риск наркотрафика через Достук", "Drug trafficking risk at Dostuk")
    a = parse_cap(cap(ALERT + english)).alert
    assert a.language == "ru" and [(t.language, t.headline) for t in a.translations] == [("en-US", "Drug trafficking risk at Dostuk")]


def test_private_scope_addresses_become_addressees_and_tlp_red():
    body = '<msgType>Alert</msgType><scope>Private</scope><addresses>blo-dostuk "kg moi"</addresses>' + INFO.replace(
        "<parameter><valueName>blonet:tlp</valueName><value>TLP:AMBER+STRICT</value></parameter>", "")
    a = parse_cap(cap(body)).alert
    assert a.addressees == ["blo-dostuk", "kg moi"] and a.tlp is Tlp.RED


@pytest.mark.parametrize("data, code", [
    (b"<alert", "xml_malformed"),
    (b"", "xml_malformed"),
    (cap(ALERT, head='<!DOCTYPE alert [<!ENTITY x "boom">]>'), "xml_dtd_forbidden"),
    (cap(ALERT, head='<!DOCTYPE alert SYSTEM "http://example.invalid/cap.dtd">'), "xml_dtd_forbidden"),
    (cap(ALERT.replace("Достук</areaDesc>", "&xxe;</areaDesc>"), head='<!DOCTYPE alert [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'), "xml_dtd_forbidden"),
    (cap(ALERT, head='<!DOCTYPE lolz [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'), "xml_dtd_forbidden"),
    (b'<?xml version="1.0"?><alert xmlns="urn:example:not-cap"/>', "cap_schema_invalid"),
    (cap(ALERT.replace("<scope>Restricted</scope>", "<scope>Secret</scope>")), "cap_schema_invalid"),
    (cap(ALERT.replace("<severity>Severe</severity>", "<severity>Bad</severity>")), "cap_schema_invalid"),
    (cap(ALERT.replace("2030-05-20T23:59:59+06:00", "2030-05-20T23:59:59Z")), "cap_schema_invalid"),
    (cap(ALERT.replace("<msgType>Alert</msgType>", "<msgType>Ack</msgType>")), "cap_unsupported"),
    (cap(ALERT.replace("<value>drugs</value>", "<value>cookies</value>")), "cap_mapping"),
    (cap(ALERT.replace("<value>TLP:AMBER+STRICT</value>", "<value>TLP:PURPLE</value>")), "cap_mapping"),
    (cap(ALERT + INFO * MAX_INFO), "cap_too_large"),
    (cap(ALERT.replace("</area>", "</area>" + "<area><areaDesc>x</areaDesc></area>" * MAX_AREAS)), "cap_too_large"),
])
def test_refused_documents_say_why(data, code):
    with pytest.raises(CapError) as err:
        parse_cap(data)
    assert err.value.code == code, str(err.value)


def test_format_time_is_what_the_schema_wants():
    assert format_time(datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=timezone.utc)) == "2026-01-02T03:04:05+00:00"
    with pytest.raises(ValueError):
        format_time(datetime(2026, 1, 2))


def _view(alert: Alert, **recipient) -> dict:
    return {"alert_id": "x", "recipient": recipient or {"agency": "kg-moi", "unit": None, "profile": "full"},
            "redacted": [], "alert": alert.model_dump(mode="json")}


def _valid(xml: bytes) -> etree._Element:
    root = etree.fromstring(xml)
    assert schema().validate(root), schema().error_log
    return root


def test_the_scenario_renders_as_valid_cap_and_comes_back_equal():
    alert = Alert.model_validate({**SCENARIO, "personal_data": {"names": ["Иванов И."], "vehicle_plates": ["01KG123ABC"]},
                                  "translations": [{"language": "en", "headline": "Drug trafficking risk"}],
                                  "addressees": ["uz-sbs"], "handling": ["H0", "H3"], "handling_note": "no press"})
    xml = render_cap(_view(alert), sender="kg-sbs@blonet", identifier="urn:uuid:0190a000-0000-7000-8000-000000000001", sent=SENT)
    _valid(xml)
    back = parse_cap(xml)
    assert back.alert == alert and back.alert_id == UUID("0190a000-0000-7000-8000-000000000001")


def test_a_summary_view_renders_only_what_it_holds():
    alert = Alert.model_validate({**SCENARIO, "personal_data": {"names": ["Иванов И."]}})
    view = _view(alert, agency="unodc", unit=None, profile="summary")
    view["alert"] = {k: v for k, v in view["alert"].items() if k not in ("description", "instruction", "personal_data", "sender_post")}
    xml = render_cap(view, sender="blonet", identifier="urn:uuid:0190a000-0000-7000-8000-000000000001", sent=SENT)
    _valid(xml)
    assert "Иванов".encode() not in xml and SCENARIO["description"].encode() not in xml


def test_red_without_addressees_names_the_recipient_and_language_picks_one_block():
    alert = Alert.model_validate({**SCENARIO, "tlp": "TLP:RED", "translations": [{"language": "en", "headline": "Risk"}]})
    xml = render_cap(_view(alert), sender="blonet", identifier="i", sent=SENT, language="en")
    root = _valid(xml)
    ns = {"c": "urn:oasis:names:tc:emergency:cap:1.2"}
    assert root.findtext("c:scope", namespaces=ns) == "Private" and root.findtext("c:addresses", namespaces=ns) == "kg-moi"
    assert [i.findtext("c:language", namespaces=ns) for i in root.findall("c:info", ns)] == ["en"]


def test_references_render_as_triples_that_resolve_back():
    ref = UUID("0190a000-0000-7000-8000-000000000001")
    alert = Alert.model_validate({**SCENARIO, "msg_type": "update", "references": [str(ref)]})
    back = parse_cap(_valid_bytes(render_cap(_view(alert), sender="kg-sbs", identifier="u-1", sent=SENT)))
    assert back.alert.references == [ref]


def _valid_bytes(xml: bytes) -> bytes:
    _valid(xml)
    return xml


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=40)
ident = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)
when = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(timezone.utc)).map(
    lambda d: d.replace(microsecond=0))


@st.composite
def alerts(draw) -> Alert:
    effective = draw(st.none() | when)
    expires = draw(st.none() | when.filter(lambda d: effective is None or d >= effective))
    handling = draw(st.lists(st.sampled_from([h for h in Handling if h is not Handling.H3]), unique=True, max_size=3))
    msg_type = draw(st.sampled_from(MsgType))
    return Alert(
        sender_agency=draw(ident), sender_post=draw(st.none() | ident), status=draw(st.sampled_from(Status)),
        msg_type=msg_type, references=draw(st.lists(st.uuids(version=4), min_size=1 if msg_type is not MsgType.ALERT else 0, max_size=3)),
        category=draw(st.sampled_from(Category)), severity=draw(st.sampled_from(Severity)),
        urgency=draw(st.sampled_from(Urgency)), certainty=draw(st.sampled_from(Certainty)),
        effective=effective, expires=expires, location={"post": draw(st.none() | ident), "border_segment": draw(st.none() | st.sampled_from(["KG-UZ", "KG-TJ"]))},
        headline=draw(text), description=draw(st.just("") | text), instruction=draw(st.none() | text),
        language=draw(st.sampled_from(["ru", "en", "uz", "en-US", "en-us", "es-419", "zh-Hant", "fil"])), tlp=draw(st.sampled_from(Tlp)), handling=handling,
        personal_data=draw(st.none() | st.builds(dict, names=st.lists(text, min_size=1, max_size=2)).map(lambda d: d)),
        addressees=draw(st.lists(ident, max_size=3)), onward_permission=draw(st.booleans()),
        translations=draw(st.lists(st.builds(dict, language=st.sampled_from(["en", "uz", "zh-TW"]), headline=text), max_size=2)),
    )


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(alerts(), when)
def test_render_then_parse_is_the_identity(alert, sent):
    alert = alert.model_copy(update={"references": [UUID(int=(r.int & ~(0xF << 76)) | (0x7 << 76)) for r in alert.references]})
    xml = render_cap(_view(alert), sender=f"{alert.sender_agency}@blonet", identifier="urn:uuid:0190a000-0000-7000-8000-000000000001", sent=sent)
    _valid(xml)
    back = parse_cap(xml).alert
    expected = alert
    if alert.tlp is Tlp.RED and not alert.addressees:
        expected = alert.model_copy(update={"addressees": ["kg-moi"]})  # Private scope names the recipient
    assert back == expected


def _info(language: str = "ru", times: str = "<expires>2030-05-20T23:59:59+06:00</expires>", text: str = "") -> str:
    info = INFO.replace("<language>ru</language>", f"<language>{language}</language>")
    return info.replace("<expires>2030-05-20T23:59:59+06:00</expires>", times).replace("<description>Ожидается попытка.</description>", text)


@pytest.mark.parametrize("language", ["es-419", "zh-TW", "zh-tw", "fil", "zh-Hant", "en-us", "uz-Latn-UZ", "de-CH-1901"])
def test_any_xs_language_tag_is_kept_as_sent(language):
    a = parse_cap(cap(ALERT + _info(language))).alert
    assert a.translations[0].language == language
    assert parse_cap(cap("<msgType>Alert</msgType><scope>Public</scope>" + _info(language))).alert.language == language


@pytest.mark.parametrize("times", [
    "<effective>2030-05-20T00:00:00+06:00</effective><expires>2030-05-20T00:00:00+06:00</expires>",
    "<onset>2030-05-20T00:00:00+06:00</onset><expires>2030-05-19T18:00:00+00:00</expires>",
    "<effective>2030-05-20T00:00:00+06:00</effective><onset>2030-05-20T00:00:00+06:00</onset><expires>2030-05-20T00:00:00+06:00</expires>",
])
def test_expires_equal_to_effective_or_onset_is_accepted(times):
    a = parse_cap(cap(ALERT.replace(INFO, _info(times=times)))).alert
    assert a.expires == a.effective


def test_onset_after_expires_leaves_effective_to_default():
    times = "<onset>2030-06-01T00:00:00+06:00</onset><expires>2030-05-20T00:00:00+06:00</expires>"  # a watch, as NWS sends
    a = parse_cap(cap(ALERT.replace(INFO, _info(times=times)))).alert
    assert a.effective is None and a.expires == datetime(2030, 5, 20, tzinfo=timezone(timedelta(hours=6)))


def test_expires_before_effective_is_expired_not_a_mapping_error():
    times = "<effective>2030-05-21T00:00:00+06:00</effective><expires>2030-05-20T00:00:00+06:00</expires>"
    with pytest.raises(CapError) as err:
        parse_cap(cap(ALERT.replace(INFO, _info(times=times))))
    assert err.value.code == "expired"


@pytest.mark.parametrize("body, code", [
    ("<msgType>Update</msgType><scope>Public</scope>" + INFO, "cap_no_references"),
    ("<msgType>Cancel</msgType><scope>Public</scope><references> </references>", "cap_no_references"),
    ("<msgType>Alert</msgType><scope>Public</scope>", "cap_no_info"),
    ("<msgType>Update</msgType><scope>Public</scope><references>a,b,2026-05-10T09:30:00+06:00</references>", "cap_no_info"),
    ("<msgType>Update</msgType><scope>Public</scope><references>a,b</references>" + INFO, "cap_invalid_reference"),
    ("<msgType>Update</msgType><scope>Public</scope><references>a,b,yesterday</references>" + INFO, "cap_invalid_reference"),
    ("<msgType>Alert</msgType><scope>Public</scope>" + _info(text=f"<description>{'x' * 20_001}</description>"), "cap_too_large"),
    ("<msgType>Alert</msgType><scope>Public</scope>" + _info(text=f"<instruction>{'x' * 4_001}</instruction>"), "cap_too_large"),
])
def test_valid_cap_the_policy_cannot_route_gets_its_own_code(body, code):
    with pytest.raises(CapError) as err:
        parse_cap(_valid_bytes(cap(body)))
    assert err.value.code == code


def test_a_headline_longer_than_blonet_keeps_is_shortened_not_refused():
    long = "Ж" * 300
    a = parse_cap(cap(ALERT.replace("Риск наркотрафика через Достук", long))).alert
    assert len(a.headline) == 200 and a.headline.endswith("…") and long.startswith(a.headline[:-1])


def test_an_info_less_cancel_takes_caps_default_language():
    body = "<msgType>Cancel</msgType><scope>Public</scope><references>kg-sbs@sbs.gov.kg,X-1,2026-05-10T09:30:00+06:00</references>"
    assert parse_cap(_valid_bytes(cap(body))).alert.language == "en-US"


@pytest.mark.parametrize("wanted, rendered", [("ru-RU", ["ru"]), ("EN-gb", ["en"]), ("zh-Hant-TW", ["zh-Hant"]),
                                              ("uk", ["ru"]), ("en-us", ["en-US"])])
def test_rendering_one_language_picks_it_by_bcp47_lookup(wanted, rendered):
    alert = Alert.model_validate({**SCENARIO, "translations": [
        {"language": "en", "headline": "Risk"}, {"language": "zh-Hant", "headline": "風險"}, {"language": "en-US", "headline": "Risk"}]})
    root = etree.fromstring(render_cap(_view(alert), sender="blonet", identifier="i", sent=SENT, language=wanted))
    ns = {"c": "urn:oasis:names:tc:emergency:cap:1.2"}
    assert [i.findtext("c:language", namespaces=ns) for i in root.findall("c:info", ns)] == rendered


CODES_FOR_VALID_CAP = {"cap_no_references", "cap_no_info", "cap_invalid_reference", "cap_too_large", "expired"}
cap_time = st.sampled_from([SENT, SENT.astimezone(timezone.utc), SENT + timedelta(hours=1)]) | st.datetimes(  # equal times often
    min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1),
    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=6)), timezone(timedelta(hours=-5))]))
language_tag = st.from_regex(r"[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8}){0,3}", fullmatch=True)
plain = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=300).map(str.strip).filter(bool)


@st.composite
def standard_cap(draw) -> tuple[bytes, dict]:
    """A schema-valid CAP 1.2 message using only what the standard defines (no blonet: entries)."""
    from xml.sax.saxutils import escape
    msg_type = draw(st.sampled_from(["Alert", "Update", "Cancel"]))
    refs = draw(st.lists(st.builds(lambda i, t: f"kg-sbs@sbs.gov.kg,ID-{i},{format_time(t)}", st.integers(0, 99), cap_time), max_size=2))
    infos, facts = [], {"refs": refs, "msg_type": msg_type, "windows": []}
    for _ in range(draw(st.integers(0, 3))):
        times = {name: draw(st.none() | cap_time) for name in ("effective", "onset", "expires")}
        facts["windows"].append(times)
        info = [f"<language>{draw(language_tag)}</language>" if draw(st.booleans()) else "",
                f"<category>{draw(st.sampled_from(['Geo', 'Met', 'Safety', 'Security', 'Other']))}</category>",
                f"<event>{escape(draw(plain))}</event>",
                f"<urgency>{draw(st.sampled_from(['Immediate', 'Expected', 'Future', 'Past', 'Unknown']))}</urgency>",
                f"<severity>{draw(st.sampled_from(['Extreme', 'Severe', 'Moderate', 'Minor', 'Unknown']))}</severity>",
                f"<certainty>{draw(st.sampled_from(['Observed', 'Likely', 'Possible', 'Unlikely', 'Unknown']))}</certainty>",
                *(f"<{n}>{format_time(t)}</{n}>" for n, t in times.items() if t is not None),
                f"<headline>{escape(draw(plain))}</headline>" if draw(st.booleans()) else ""]
        infos.append("<info>" + "".join(info) + "</info>")
    body = (f"<msgType>{msg_type}</msgType><scope>Public</scope>"
            + (f"<references>{' '.join(refs)}</references>" if refs else "") + "".join(infos))
    return cap(body), facts


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(standard_cap())
def test_standard_cap_is_accepted_or_refused_for_a_reason_the_standard_gives(message):
    data, facts = message
    _valid(data)
    try:
        alert = parse_cap(data).alert
    except CapError as err:
        assert err.code in CODES_FOR_VALID_CAP, str(err)
        if err.code == "cap_no_references":
            assert facts["msg_type"] != "Alert" and not facts["refs"]
        elif err.code == "cap_no_info":
            assert facts["msg_type"] != "Cancel" and not facts["windows"]
        elif err.code == "expired":
            w = facts["windows"][0]
            assert w["effective"] and w["expires"] and w["expires"] < w["effective"]
        else:
            raise
        return
    assert alert.headline and len(alert.headline) <= 200 and len(alert.translations) == max(0, len(facts["windows"]) - 1)


@pytest.mark.parametrize("where", ["headline", "description", "identifier", "sender"])
def test_control_characters_are_refused_naming_the_field(where):
    doc = cap(ALERT).decode().replace(f"<{where}>", f"<{where}>X\u0085", 1)  # NEL: C1, and legal in XML 1.0
    with pytest.raises(CapError) as caught:
        parse_cap(doc.encode())
    assert where in str(caught.value) and "control character" in str(caught.value)
