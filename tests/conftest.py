"""Test settings shared by every test: isolated ports, database and topics for this run."""
from __future__ import annotations

import os
import random
import secrets
from pathlib import Path

from shared.settings import REPO

# The real stack's session fixtures, registered once for tests/integration and tests/security.
pytest_plugins = ["tests.fixtures"]

RUN = secrets.token_hex(3)
# Every port a test run opens is BASE + a fixed offset, with BASE drawn per run, so test runs
# started side by side (two developers' sessions, CI beside a dev loop) never collide.
# Blocks are 500 wide because offsets go up to 499 (400-499: the notifier tests), and all stay
# below 32768, where Linux's ephemeral range starts: a listener there can find its port taken by
# the local end of some client connection.
BASE = 20_000 + 500 * random.SystemRandom().randrange(25)


def port(offset: int) -> int:
    return BASE + offset

# The test stack's Kafka and PostgreSQL (started by `make test`, or by the integration fixtures)
# listen on their own ports beside a `make run` stack; each run gets its own database and topics.
KAFKA_PORT = os.environ.get("BLONET_TEST_KAFKA_PORT", "19092")
PG_PORT = os.environ.get("BLONET_TEST_PG_PORT", "15433")
STACK_DIR = os.environ.get("BLONET_TEST_STACK_DIR", str(REPO / "var" / "test-stack"))
STACK_ENV = {
    "BLONET_STACK_DIR": STACK_DIR,
    "BLONET_KAFKA_PORT": KAFKA_PORT,
    "BLONET_KAFKA_CONTROLLER_PORT": os.environ.get("BLONET_TEST_CONTROLLER_PORT", "19093"),
    "BLONET_PG_PORT": PG_PORT,
}
APP_ENV = {
    "BLONET_ENVIRONMENT": "test",
    "BLONET_KAFKA_BOOTSTRAP": f"127.0.0.1:{KAFKA_PORT}",
    # The test stack's Kafka logins (written when it is formatted): tests act as admin, and each
    # service process as itself (services/*/__main__.py), under the ACLs granted for this run's prefix.
    "BLONET_SECRETS_FILE": str(Path(STACK_DIR) / "kafka" / "secrets.json"),
    "BLONET_PG_PORT": PG_PORT,
    "BLONET_PG_DATABASE": f"blonet_test_{RUN}",
    "BLONET_TOPIC_PREFIX": f"t{RUN}.",
    "BLONET_GATEWAY_PORT": str(port(0)),
    "BLONET_ROUTING_PORT": str(port(1)),
    "BLONET_NOTIFIER_PORT": str(port(2)),
    "BLONET_AUDIT_PORT": str(port(3)),
    "BLONET_DEMO_INBOX_PORT": str(port(10)),
    "BLONET_PUBLIC_BASE_URL": f"http://127.0.0.1:{port(0)}",
    "BLONET_RETRY_SCHEDULE_SECONDS": "[0.2, 0.5, 1]",
    "BLONET_CIRCUIT_FAILURE_THRESHOLD": "3",  # notifier: open after 3 failures, probe after 2 s
    "BLONET_CIRCUIT_COOLDOWN_SECONDS": "2",
    "BLONET_SMTP_PORT": str(port(400)),  # the notifier tests' own SMTP server (aiosmtpd)
    "BLONET_STREAM_RECHECK_SECONDS": "1",  # streams re-check their caller every second, not every 15 s
    "BLONET_TOKEN_PRIVATE_KEY_FILE": str(REPO / "var" / "test-keys" / "token.pem"),
    "BLONET_TOKEN_PUBLIC_KEY_FILE": str(REPO / "var" / "test-keys" / "token.pub.pem"),
}
os.environ.update(APP_ENV)
