"""A service whose database or Kafka login is refused never becomes ready, and says which setting to fix."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import port
from tests.integration.conftest import start_service

pytestmark = pytest.mark.stack


async def refused(name: str, env: dict[str, str], log_dir) -> str:
    """Start `name` with `env`; it must exit without ever answering /readyz with 200. Return its log."""
    service_port = port(95)
    proc = start_service(name, log_dir, {f"BLONET_{name.upper()}_PORT": str(service_port), **env}, suffix="-refused")
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):  # up to 60 s on a loaded machine
                if proc.proc.poll() is not None:
                    break
                try:
                    async with http.get(f"http://127.0.0.1:{service_port}/readyz") as r:
                        assert r.status != 200, f"{name} became ready with a refused login"
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        assert proc.proc.poll() not in (None, 0), f"{name} did not fail:\n{proc.tail()}"
        return proc.log.read_text(errors="replace")
    finally:
        proc.stop()


async def test_a_wrong_database_password_fails_start_up_with_a_clear_message(settings, tmp_path):
    log = await refused("routing", {"BLONET_DB_ROUTING_PASSWORD": "not-the-password"}, tmp_path)
    assert "the database refused the login of role routing" in log
    assert "BLONET_DB_ROUTING_PASSWORD" in log
    assert "not-the-password" not in log


async def test_a_wrong_kafka_password_fails_start_up_with_a_clear_message(settings, tmp_path):
    log = await refused("notifier", {"BLONET_KAFKA_PASSWORD": "not-the-password"}, tmp_path)
    assert "SaslAuthenticationFailed" in log
    assert "log in to Kafka" in log and "as principal notifier" in log
    assert "not-the-password" not in log
