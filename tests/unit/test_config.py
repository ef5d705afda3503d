"""Settings, directory validation and tokens."""
from pathlib import Path

import jwt
import pytest
import yaml

from services.routing.network import NetworkConfigError, load_network
from shared.auth import Principal, Role, issue_token, split_api_key, new_api_key, verify_token, ensure_signing_key
from shared.settings import REPO, Settings


def test_production_refuses_development_secrets(tmp_path):
    with pytest.raises(ValueError, match="BLONET_DB_PASSWORD"):
        Settings(environment="production")
    with pytest.raises(ValueError, match="INSECURE_WEBHOOKS"):
        Settings(environment="production", db_password="s3cret-long")
    ok = Settings(environment="production", db_password="s3cret-long", allow_insecure_webhooks=False,
                  token_private_key_file=tmp_path / "k.pem", token_public_key_file=tmp_path / "k.pub")
    assert ok.password_for("routing") == "s3cret-long"


def test_a_broken_network_is_refused_with_every_problem_listed(tmp_path: Path):
    doc = yaml.safe_load((REPO / "deploy/network/directory.yaml").read_text())
    doc["agencies"][0]["kind"] = "wizard"
    (tmp_path / "directory.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
    (tmp_path / "rules.yaml").write_text("rules: [{id: Bad Id, recipients: [everyone]}]")
    with pytest.raises(NetworkConfigError) as caught:
        load_network(tmp_path)
    problems = caught.value.problems
    assert any("directory: agencies.0.kind: Input should be" in p for p in problems)
    assert any("rules: rules.0.id: String should match pattern" in p for p in problems)
    assert any("rules: rules.0.recipients.0: Input should be" in p for p in problems)


def test_directory_references_are_checked_as_a_whole(tmp_path: Path):
    doc = yaml.safe_load((REPO / "deploy/network/directory.yaml").read_text())
    doc["posts"][0]["units"][0]["agency"] = "nobody"
    doc["posts"][0]["counterpart"] = "dostuk"  # Bor-Dobo and Dostuk do not face each other
    doc["agreements"].append({**doc["agreements"][0], "title": "a second protocol with the same id"})
    (tmp_path / "directory.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
    (tmp_path / "rules.yaml").write_text("rules: [{id: r1, named: [ghost], match: {post: [atlantis]}}]")
    with pytest.raises(NetworkConfigError) as caught:
        load_network(tmp_path)
    text = str(caught.value)
    for expected in ("unit blo-bor-dobo: unknown agency nobody", "post bor-dobo: counterpart dostuk does not name it back",
                     "agreement id kg-uz-blo-2015 is used twice"):
        assert expected in text, text
    (tmp_path / "directory.yaml").write_text((REPO / "deploy/network/directory.yaml").read_text())
    with pytest.raises(NetworkConfigError) as caught:
        load_network(tmp_path)
    assert caught.value.problems == ["rules: rule r1: unknown agency or unit ghost", "rules: rule r1: unknown post atlantis"]


def test_tokens_round_trip_and_refuse_forgery(tmp_path):
    s = Settings(token_private_key_file=tmp_path / "a.pem", token_public_key_file=tmp_path / "a.pub")
    other = Settings(token_private_key_file=tmp_path / "b.pem", token_public_key_file=tmp_path / "b.pub", token_ttl_seconds=-5)
    ensure_signing_key(s)
    ensure_signing_key(other)
    p = Principal("k1", "unodc", frozenset({Role.AUDITOR}))
    assert verify_token(s, issue_token(s, p)) == p
    with pytest.raises(jwt.InvalidSignatureError):
        verify_token(s, issue_token(other, p))
    with pytest.raises(jwt.ExpiredSignatureError):
        verify_token(other, issue_token(other, p))


def test_api_key_format():
    key_id, key = new_api_key()
    assert split_api_key(key) == key_id
    assert split_api_key("Bearer nonsense") is None and split_api_key("blo__x") is None


def test_repeated_log_messages_are_throttled():
    import logging

    from shared.observability import Throttle

    throttle = Throttle(seconds=60)
    rec = lambda msg: logging.LogRecord("aiokafka", logging.ERROR, "", 0, msg, None, None)  # noqa: E731
    assert throttle.filter(rec("Unable connect to node"))
    assert not throttle.filter(rec("Unable connect to node"))
    assert throttle.filter(rec("another message"))
    ours = logging.LogRecord("services.gateway.api", logging.INFO, "", 0, "alert accepted", None, None)
    assert throttle.filter(ours) and throttle.filter(ours)
