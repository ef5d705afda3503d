"""Settings, directory validation and tokens."""
import json
from pathlib import Path

import jwt
import pytest
import yaml

from services.routing.network import NetworkConfigError, load_network
from shared.auth import Principal, Role, issue_token, split_api_key, new_api_key, verify_token, ensure_signing_key
from shared.settings import REPO, SecretsError, Settings


PRODUCTION = {"environment": "production", "allow_insecure_webhooks": False, "secrets_file": None}


def test_production_refuses_development_secrets(tmp_path):
    keys = {"token_private_key_file": tmp_path / "k.pem", "token_public_key_file": tmp_path / "k.pub"}
    with pytest.raises(ValueError, match="INSECURE_WEBHOOKS"):
        Settings(environment="production")
    with pytest.raises(ValueError, match="BLONET_DB_NOTIFIER_PASSWORD must be a real secret"):
        Settings(**PRODUCTION, **keys, db_notifier_password="dev-notifier")
    with pytest.raises(ValueError, match="SASL_PLAINTEXT or SASL_SSL"):
        Settings(**PRODUCTION, **keys, kafka_security_protocol="PLAINTEXT")
    ok = Settings(**PRODUCTION, **keys, db_routing_password="s3cret-routing", db_audit_password="s3cret-audit")
    assert ok.password_for("routing") == "s3cret-routing" and ok.password_for("audit") == "s3cret-audit"
    with pytest.raises(SecretsError, match="BLONET_DB_GATEWAY_PASSWORD"):  # no shared fallback, no dev default
        ok.password_for("gateway")
    with pytest.raises(SecretsError, match="no Kafka password for principal admin"):  # production never runs PLAINTEXT
        ok.kafka_login()


def test_each_role_has_its_own_password_from_settings_or_the_secrets_file(tmp_path):
    file = tmp_path / "secrets.json"
    file.write_text(json.dumps({"kafka": {"admin": "ka", "routing": "kr"}, "db": {"routing": "dr", "gateway": "dg"}}))
    s = Settings(secrets_file=file, db_gateway_password="explicit")
    assert [s.password_for(r) for r in ("gateway", "routing", "notifier")] == ["explicit", "dr", "dev-notifier"]
    assert s.kafka_login() == ("admin", "ka")
    assert s.for_service("routing").kafka_login() == ("routing", "kr")
    assert s.model_copy(update={"kafka_username": "audit"}).for_service("routing").kafka_username == "audit"
    with pytest.raises(SecretsError, match="no Kafka password for principal notifier"):
        s.for_service("notifier").kafka_login()  # a SASL stack without the notifier's password: say so
    # No secrets file outside production: an unauthenticated client (a PLAINTEXT broker).
    assert Settings(secrets_file=tmp_path / "absent.json").kafka_login() is None
    assert "pw-7f3a" not in repr(s.model_copy(update={"kafka_password": "pw-7f3a"}))


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
