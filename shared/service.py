"""The runtime every service shares: settings, logs, migrations, DB engine, producer, consumers."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

import uvicorn
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from fastapi import FastAPI
from sqlalchemy import text

from shared import db, failures, tracing
from shared.bodylimit import BodyLimit
from shared.kafka import EventConsumer, make_producer
from shared.topics import accepted_events, deadletter_topic
from shared.observability import configure_logging, install
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)
RENEW_EVERY_SECONDS = 5.0  # a broken producer is replaced at most this often
LOGIN_REFUSED = {"28P01", "28000"}  # SQLSTATE: invalid_password, invalid_authorization_specification


class StartupRefused(RuntimeError):
    """A dependency refused this service's credentials: the message says which setting to fix."""


class Runtime:
    """Holds a service's connections; `app()` builds its FastAPI app with a managed lifespan."""

    def __init__(self, name: str, port: int, settings: Settings | None = None) -> None:
        self.name, self.port = name, port
        self.settings = settings or get_settings()
        self.engine = db.make_engine(self.settings, name)
        self.sessions = db.make_sessionmaker(self.engine)
        self.producer: AIOKafkaProducer | None = None  # aiokafka objects need the running loop
        self.producer_timeout_ms = 30_000
        self.consumers: list[EventConsumer] = []
        self.workers: list[Callable[[], Awaitable[None]]] = []
        self.before_consuming: list[Callable[[], Awaitable[None]]] = []  # start-up steps needing DB and producer
        self.on_stop: list[Callable[[], Awaitable[None]]] = []  # e.g. closing HTTP client sessions
        self.on_body_refused: Callable[[dict, str], None] | None = None  # e.g. the gateway counts refused submissions
        self._tasks: list[asyncio.Task] = []
        self._renewing, self._renewed_at = asyncio.Lock(), float("-inf")
        self.stopping = asyncio.Event()

    def consume(self, group: str, topics: list[str], handler, **kwargs) -> None:
        """Run `handler` on batches of `topics` as a member of consumer group `group` (both prefixed).

        A record the handler keeps failing on while the database and Kafka answer their probes
        goes to `<service>.deadletter`; a failure the probes share is an outage, retried.
        """
        topic_names = [self.settings.topic(t) for t in topics]
        self.consumers.append(EventConsumer(
            self.settings, group=self.settings.topic(group), topics=topic_names, handler=handler,
            accepts=accepted_events(self.settings, topics),
            deadletter_topic=self.settings.topic(deadletter_topic(self.name).name),
            probes=(self._check_db, self._check_kafka), transaction=lambda: db.one_transaction(self.engine),
            on_outage=self.recover, **kwargs,
        ))

    async def _check_db(self) -> None:
        async with self.engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), 2)

    async def _log_in_to_database(self) -> None:
        """Fail start-up (and so readiness) with one clear line when the database refuses this role's login."""
        try:
            await self._check_db()
        except Exception as exc:
            if failures.sqlstate(exc) not in LOGIN_REFUSED:
                raise
            raise StartupRefused(
                f"{self.name}: the database refused the login of role {self.name} ({type(exc).__name__}): set "
                f"BLONET_DB_{self.name.upper()}_PASSWORD (or db.{self.name} in BLONET_SECRETS_FILE) to its password") from None

    async def recover(self, exc: BaseException) -> None:
        """Replace the producer when a failure says it cannot send again (failures.PRODUCER_BROKEN).

        Never raises: while Kafka is away the old producer stays, and the next such failure tries again."""
        if not failures.producer_broken(exc):
            return
        async with self._renewing:
            # Every record in flight on the old producer fails alike: one replacement serves them all.
            if time.monotonic() - self._renewed_at < RENEW_EVERY_SECONDS:
                return
            fresh = make_producer(self.settings, self.producer_timeout_ms)
            try:
                await fresh.start()
            except Exception:  # noqa: BLE001 - Kafka away: keep the old one for now
                log.warning("replacing the producer failed; trying again at the next failure", exc_info=True)
                await fresh.stop()
                return
            self._renewed_at = time.monotonic()
            old, self.producer = self.producer, fresh
            for consumer in self.consumers:
                consumer.producer = self.producer
            log.warning("producer replaced: it had lost its sequence for a partition", extra={
                "error_class": failures.error_class(exc)})
        try:
            await asyncio.wait_for(old.stop(), 10)
        except Exception:  # noqa: BLE001 - the old one is being dropped anyway
            log.warning("stopping the replaced producer failed", exc_info=True)

    async def _check_kafka(self) -> None:
        if not await asyncio.wait_for(self.producer.client.force_metadata_update(), 2):
            raise ConnectionError("no Kafka broker answered")

    async def start(self) -> None:
        tracing.configure(self.name, self.settings)  # spans exported only when BLONET_OTLP_ENDPOINT is set
        await self._log_in_to_database()
        await db.migrate(self.settings, self.name)
        self.producer = make_producer(self.settings, self.producer_timeout_ms)
        try:
            await self.producer.start()
        except KafkaConnectionError as exc:
            user = (self.settings.kafka_login() or ("none (PLAINTEXT)",))[0]
            raise StartupRefused(f"{self.name}: cannot reach or log in to Kafka at {self.settings.kafka_bootstrap} as "
                                 f"principal {user} ({exc}); a refused login is logged just above") from None
        for consumer in self.consumers:
            consumer.producer = self.producer
        for step in self.before_consuming:
            await step()
        self._tasks = [asyncio.create_task(c.run(), name=f"consumer:{c.group}") for c in self.consumers]
        self._tasks += [asyncio.create_task(self._supervised(w), name=f"worker:{getattr(w, '__name__', 'worker')}")
                        for w in self.workers]
        for task in self._tasks:
            task.add_done_callback(self._on_task_done)
        log.info("service started", extra={"port": self.port})

    async def _supervised(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run a background worker; one that fails because the database or Kafka is away (a restart,
        a dropped connection: pools no longer pre-ping) is started again after a pause. Any other
        failure stops the service (`_on_task_done`)."""
        pause = 0.5
        while True:
            try:
                return await work()
            except Exception as exc:
                if self.stopping.is_set() or not failures.transient(exc):
                    raise
                log.warning("background worker failed during an outage; restarting it", extra={
                    "worker": getattr(work, "__name__", "worker"), "error_class": failures.error_class(exc),
                    "error": failures.describe(exc), "retry_in_s": pause})
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _on_task_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() and not self.stopping.is_set():
            log.error("background task died; stopping the service", exc_info=task.exception())
            os.kill(os.getpid(), signal.SIGTERM)  # let uvicorn shut down cleanly; the supervisor sees it

    async def stop(self) -> None:
        self.stopping.set()
        for consumer in self.consumers:
            consumer.stop()
        done, pending = await asyncio.wait(self._tasks, timeout=15) if self._tasks else (set(), set())
        for task in pending:
            task.cancel()
        for step in self.on_stop:
            await step()
        if self.producer:
            await self.producer.stop()
        await self.engine.dispose()
        tracing.shutdown()  # flush the spans still buffered
        log.info("service stopped")

    def app(self, **fastapi_kwargs) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI):
            try:
                await self.start()
            except StartupRefused as exc:
                log.error(str(exc))  # one clear line in the service's own log format, then uvicorn exits
                raise
            try:
                yield
            finally:
                await self.stop()

        # FastAPI's own OpenTelemetry spans would duplicate TraceMiddleware's once a provider is set: off.
        app = FastAPI(title=f"BLOnet {self.name}", lifespan=lifespan, telemetry=tracing.FASTAPI_TELEMETRY_OFF,
                      **fastapi_kwargs)
        install(app, self.name, {"database": self._check_db, "kafka": self._check_kafka})
        app.add_middleware(tracing.TraceMiddleware, service=self.name)  # a SERVER span per request, when on
        # Outermost: an oversized body is refused (413) before anything reads it, auth included.
        app.add_middleware(BodyLimit, max_bytes=self.settings.max_body_bytes, on_refused=self.on_body_refused)
        return app

    def serve(self, app: FastAPI) -> None:
        """Run the app in the foreground; SIGINT/SIGTERM stop it gracefully."""
        configure_logging(self.name, self.settings.log_level)
        # Open streams (the live flow, SSE) would otherwise hold a stopping service for up to an hour.
        uvicorn.run(app, host=self.settings.bind_host, port=self.port, log_config=None, access_log=False,
                    timeout_graceful_shutdown=5)
