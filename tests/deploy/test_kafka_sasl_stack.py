"""The local stack's Kafka authenticates from its first start, and a data folder formatted before it
did (no credentials beside it) is reformatted by `start` itself, saying so."""
from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess

import pytest
from aiokafka.errors import KafkaError

from shared.kafka import make_admin
from shared.settings import REPO, Settings
from tests.conftest import port

pytestmark = pytest.mark.stack


def stack(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "deploy" / "stack.sh"), *args, "kafka"], env=env, capture_output=True,
                          text=True, timeout=300)


async def brokers(settings: Settings) -> int:
    admin = make_admin(settings, request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(admin.start(), 30)
        return len((await admin.describe_cluster())["brokers"])
    finally:
        await admin.close()


async def test_a_plaintext_folder_is_reformatted_with_credentials_and_only_logins_get_in(tmp_path):
    folder = tmp_path / "stack"
    env = {**os.environ, "BLONET_STACK_DIR": str(folder), "BLONET_KAFKA_PORT": str(port(380)),
           "BLONET_KAFKA_CONTROLLER_PORT": str(port(381))}
    secrets = folder / "kafka" / "secrets.json"
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{port(380)}", secrets_file=secrets)
    try:
        first = stack(env, "start")
        assert first.returncode == 0, first.stdout + first.stderr
        for private in (secrets, folder / "kafka" / "server.properties", folder / "kafka" / "format.log"):
            assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
        assert set(json.loads(secrets.read_text())["kafka"]) == {"admin", "gateway", "routing", "notifier", "audit"}
        assert await brokers(settings) == 1
        with pytest.raises((KafkaError, asyncio.TimeoutError)):
            await brokers(settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT"}))

        # A folder from before issue 13: formatted, but no credentials file.
        assert stack(env, "stop").returncode == 0
        old = json.loads(secrets.read_text())["kafka"]
        secrets.unlink()
        again = stack(env, "start")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "was formatted without SASL (PLAINTEXT, before issue 13): deleting its topics and offsets" in again.stdout
        assert "kafka: started" in again.stdout
        assert json.loads(secrets.read_text())["kafka"]["admin"] != old["admin"]
        assert await brokers(settings) == 1
        with pytest.raises((KafkaError, asyncio.TimeoutError)):  # the old password is gone with the old metadata
            await brokers(settings.model_copy(update={"kafka_password": old["admin"]}))
    finally:
        stack(env, "stop")
