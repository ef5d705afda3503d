"""Helpers for the tests on the real stack: starting it, sessions, keys, services as real processes.

The session fixtures built from them (settings, inbox, services) are in tests/fixtures.py, so the
integration tests and the adversarial suite (tests/security) share one stack and one set of services."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiokafka import TopicPartition

from services.gateway import repository as gateway_repo
from shared import db
from shared.auth import Role, hash_api_key, new_api_key
from shared.kafka import DEADLETTER_MAX_BYTES, make_consumer
from shared.settings import REPO, Settings
from tests.conftest import APP_ENV, STACK_ENV

INBOX_PORT = int(APP_ENV["BLONET_DEMO_INBOX_PORT"])


def start_stack() -> None:
    """Start the test Kafka and PostgreSQL (idempotent: `make test` may have started them)."""
    result = subprocess.run([str(REPO / "deploy" / "stack.sh"), "start"], env={**os.environ, **STACK_ENV},
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.exit(f"test stack failed to start:\n{result.stdout}\n{result.stderr}", returncode=3)


def network_dir(tmp: Path, inbox_port: int = INBOX_PORT) -> Path:
    """Copy the demo network with endpoint URLs pointing at a test inbox port."""
    doc = yaml.safe_load((REPO / "deploy/network/directory.yaml").read_text())
    for e in doc["endpoints"]:
        e["url"] = re.sub(r":\d+/inbox/", f":{inbox_port}/inbox/", e["url"])
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "directory.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
    (tmp / "rules.yaml").write_text((REPO / "deploy/network/rules.yaml").read_text())
    return tmp


in_session = db.in_session  # kept under this name: many tests import it from here


async def read_topic(settings: Settings, name: str, partitions: int) -> list:
    """Every record on a topic, from the beginning (dead letters up to their topics' size included)."""
    consumer = make_consumer(settings, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 * DEADLETTER_MAX_BYTES)
    await consumer.start()
    try:
        parts = [TopicPartition(name, p) for p in range(partitions)]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        found = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for part in (await consumer.getmany(timeout_ms=500)).values():
                found += part
        return found
    finally:
        await consumer.stop()


async def make_key(settings: Settings, agency: str, *roles: Role) -> str:
    key_id, key = new_api_key()
    await in_session(settings, "gateway", lambda s: gateway_repo.add_key(
        s, key_id=key_id, agency=agency, roles=list(roles), key_hash=hash_api_key(key), label="test"))
    return key


class Process:
    """One service (or other command) as a real OS process, its output kept in a log file."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict | None = None) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.proc = subprocess.Popen(args, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True, cwd=REPO)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


async def wait_ready(port: int, proc: Process, timeout: float = 60) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(int(timeout / 0.2)):
            if proc.proc.poll() is not None:
                raise AssertionError(f"{proc.name} exited:\n{proc.tail()}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"{proc.name} not ready:\n{proc.tail()}")


def start_service(name: str, log_dir: Path, env: dict | None = None, suffix: str = "") -> Process:
    return Process(f"{name}{suffix}", [sys.executable, "-m", f"services.{name}"], log_dir, env)
