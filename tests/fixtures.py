"""The session fixtures of the real stack, registered once (tests/conftest.py: pytest_plugins), so the
integration tests and the adversarial suite (tests/security) share one stack and one set of services."""
from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator

import pytest

from demo.inbox import Inbox, serve
from services.audit import keys as audit_keys
from services.notifier import repository as notifier_repo
from services.routing.network import load_network
from shared import db, topics
from shared.auth import ensure_signing_key
from shared.settings import Settings, get_settings
from tests.integration.conftest import INBOX_PORT, Process, in_session, network_dir, start_service, start_stack, wait_ready


@pytest.fixture(scope="session")
async def settings(tmp_path_factory) -> AsyncIterator[Settings]:
    start_stack()
    os.environ["BLONET_NETWORK_DIR"] = str(network_dir(tmp_path_factory.mktemp("network")))
    get_settings.cache_clear()
    s = get_settings()
    ensure_signing_key(s)
    # The console trusts only a configured verifier key: pin the audit log's, as an operator would.
    os.environ["BLONET_AUDIT_VERIFIER_KEY"] = str(audit_keys.load_signing_key(s).verifier)
    get_settings.cache_clear()
    s = get_settings()
    await db.bootstrap(s)
    for service in db.SERVICES:
        await db.migrate(s, service)
    await topics.create_topics(s)
    yield s
    await db.drop_database(s)
    # Every topic of this run, the extra prefixes some tests use included: a test stack that
    # keeps them grows by ~70 partitions a run until the broker takes minutes to start.
    await topics.delete_topics(s, s.topic_prefix)


@pytest.fixture(scope="session")
async def inbox(settings) -> AsyncIterator[Inbox]:
    directory = load_network(settings.network_dir).directory
    await in_session(settings, "notifier", lambda s: notifier_repo.ensure_endpoints(s, {e.id for e in directory.endpoints}))
    found = await in_session(settings, "notifier", notifier_repo.secrets_by_endpoint)
    box = Inbox(secrets=lambda: found)
    runner = await serve(box, INBOX_PORT)
    yield box
    await runner.cleanup()


@pytest.fixture(scope="session")
async def services(settings, inbox, tmp_path_factory) -> AsyncIterator[dict[str, Process]]:
    """The four services as separate processes, sharing the test stack."""
    log_dir = tmp_path_factory.mktemp("logs")
    procs = {name: start_service(name, log_dir) for name in db.SERVICES}
    try:
        for name, proc in procs.items():
            await wait_ready(getattr(settings, f"{name}_port"), proc)
        yield procs
    finally:
        codes = {name: proc.stop() for name, proc in procs.items()}
        # uvicorn re-raises the signal after a graceful shutdown, so -SIGTERM is a clean exit.
        bad = {n: c for n, c in codes.items() if c not in (0, -signal.SIGTERM) or "service stopped" not in procs[n].tail(5)}
        assert not bad, f"services did not stop cleanly: {bad}\n" + "\n".join(procs[n].tail(20) for n in bad)
