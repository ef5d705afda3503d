"""The gateway's view of the directory: from the network files, then from each routing.rules announcement."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
import yaml

from services.gateway.directory import ActiveDirectory, directory_of
from services.gateway.service import ApiError, Caller, check_originator
from shared.auth import Principal, Role
from shared.cap import cap_alert_id
from shared.directory import Directory
from shared.events import Envelope, RulesChanged
from shared.settings import REPO, Settings


def announcement(content: dict, digest: str = "sha256:new") -> bytes:
    event = RulesChanged(ruleset_hash=digest, previous_hash=None, changed_by="test", source="api", content=content)
    return Envelope.wrap(event, origin_node="test", alert_id=None, thread_id=None).to_bytes()


def caller(agency: str) -> Caller:
    return Caller(Principal("k1", agency, frozenset({Role.SUBMIT})), None)


@pytest.fixture
def directory() -> ActiveDirectory:
    return ActiveDirectory(Settings(network_dir=REPO / "deploy" / "network"))


def test_observers_may_not_originate_until_the_directory_says_so(directory):
    check_originator(directory, caller("kg-sbs"))
    check_originator(directory, caller("nobody-listed"))  # routing refuses an unknown sender itself
    with pytest.raises(ApiError) as err:
        check_originator(directory, caller("kz-mof"))
    assert (err.value.status, err.value.code) == (403, "may_not_originate")

    doc = yaml.safe_load((REPO / "deploy/network/directory.yaml").read_text())
    next(a for a in doc["agencies"] if a["id"] == "kz-mof")["may_originate"] = True
    directory.apply(announcement({"directory": doc, "rules": {"rules": []}}))
    assert directory.ruleset_hash == "sha256:new"
    check_originator(directory, caller("kz-mof"))


def test_a_record_without_a_valid_directory_changes_nothing(directory):
    before = directory.current
    for value in (b"\x00garbage", announcement({"directory": {"countries": "not a list"}, "rules": {}}), announcement({})):
        assert directory_of(value) is None
        directory.apply(value)
    assert directory.current is before and directory.ruleset_hash is None


def test_cap_senders_belong_to_one_agency():
    doc = yaml.safe_load((REPO / "deploy/network/directory.yaml").read_text())
    next(a for a in doc["agencies"] if a["id"] == "kg-sbs")["cap_senders"] = ["kg-sbs@sbs.gov.kg", "cap@sbs.gov.kg"]
    d = Directory.model_validate(doc)
    assert d.cap_sender_problem("kg-sbs", "cap@sbs.gov.kg") is None
    assert d.cap_sender_problem("kg-sbs", "someone@else") == "kg-sbs sends CAP only as kg-sbs@sbs.gov.kg, cap@sbs.gov.kg"
    assert d.cap_sender_problem("uz-sbs", "kg-sbs@sbs.gov.kg") == "CAP sender kg-sbs@sbs.gov.kg belongs to kg-sbs"
    assert d.cap_sender_problem("uz-sbs", "uz@sbs.uz") is None, "an agency listing none sends as any sender not listed"
    next(a for a in doc["agencies"] if a["id"] == "uz-sbs")["cap_senders"] = ["cap@sbs.gov.kg"]
    with pytest.raises(ValueError, match="CAP sender cap@sbs.gov.kg is listed for two agencies"):
        Directory.model_validate(doc)


def test_cap_ids_are_agency_scoped_and_the_old_ones_still_computable():
    sent = datetime(2026, 11, 1, tzinfo=timezone.utc)
    ids = {cap_alert_id("s@x", "I-1", sent, agency) for agency in ("kg-sbs", "uz-sbs", None)}
    assert len(ids) == 3 and cap_alert_id("s@x", "I-1", sent, "kg-sbs") == cap_alert_id("s@x", "I-1", sent, "kg-sbs")
    own = cap_alert_id("s@x", "I-1", sent, "kg-sbs")
    assert cap_alert_id("anyone", f"urn:uuid:{own}", sent, "uz-sbs") == own, "BLOnet's own ids resolve to themselves"


def test_signing_fields_are_optional_checked_and_leave_an_old_directory_hash_unchanged(directory):
    from services.routing.network import load_network, network_from
    from tests.capkeys import make_key

    before = load_network(REPO / "deploy" / "network")
    assert "cap_signing_certificates" not in str(before.content()) and "sign_cap" not in str(before.content())
    assert directory.cap_signing("kg-sbs") == ((), False) and directory.cap_signing("nobody-listed") == ((), False)
    doc = yaml.safe_load((REPO / "deploy/network/directory.yaml").read_text())
    sbs = next(a for a in doc["agencies"] if a["id"] == "kg-sbs")
    sbs["require_signed_cap"] = True
    with pytest.raises(ValueError, match="require_signed_cap needs cap_signing_certificates"):
        Directory.model_validate(doc)
    sbs["cap_signing_certificates"] = ["not a certificate"]
    with pytest.raises(ValueError, match=r"cap_signing_certificates\[0\] is not a PEM certificate"):
        Directory.model_validate(doc)
    pem = make_key("kg-sbs").certificate_pem.decode()
    sbs["cap_signing_certificates"] = [pem]
    doc["endpoints"][0]["sign_cap"] = True
    doc["endpoints"][0]["format"] = "json"
    with pytest.raises(ValueError, match="sign_cap needs format cap"):
        Directory.model_validate(doc)
    doc["endpoints"][0]["format"] = "cap"
    directory.apply(announcement({"directory": doc, "rules": {"rules": []}}))
    assert directory.cap_signing("kg-sbs") == ((pem,), True)
    changed = network_from({"directory": doc, "rules": before.content()["rules"]}, "test")
    assert changed.hash != before.hash and changed.directory.endpoints[0].sign_cap
