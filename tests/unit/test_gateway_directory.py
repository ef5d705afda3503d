"""The gateway's view of the directory: from the network files, then from each routing.rules announcement."""
from __future__ import annotations

import pytest
import yaml

from services.gateway.directory import ActiveDirectory, directory_of
from services.gateway.service import ApiError, Caller, check_originator
from shared.auth import Principal, Role
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
