"""PostgreSQL plumbing: one database, one schema and one login role per service.

A service's role owns its schema and has no rights on the others, so "no service reads
another's tables" is enforced by the database, not by convention.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from shared.settings import Settings

SERVICES = ("gateway", "routing", "notifier", "audit")
MIGRATION_LOCK = 0x426C6F6E  # advisory lock key: one migrator at a time per database
# Schemas that belong to a separate owner role: the service's own role gets only the rights its
# migrations grant (the audit log: INSERT and SELECT), so it cannot alter, drop or disable triggers.
OWNER_ROLES = {"audit": "audit_owner"}


def owner_role(service: str) -> str:
    return OWNER_ROLES.get(service, service)


def _password(settings: Settings, role: str) -> str:
    if role in OWNER_ROLES.values():
        if settings.db_owner_password:
            return settings.db_owner_password
        if settings.environment == "production":
            raise RuntimeError(f"BLONET_DB_OWNER_PASSWORD is needed to act as {role}")
    return settings.password_for(role)


def service_url(settings: Settings, role: str) -> URL:
    return URL.create(
        "postgresql+asyncpg", username=role, password=_password(settings, role),
        host=settings.pg_host, port=settings.pg_port, database=settings.pg_database,
    )


POOL_RECYCLE_SECONDS = 300


def make_engine(settings: Settings, role: str, pool_size: int = 10) -> AsyncEngine:
    """Return a service's engine.

    No pre-ping (it costs round trips on every checkout): connections are recycled after
    POOL_RECYCLE_SECONDS, and a disconnect error invalidates the pool so the next checkout
    reconnects; the consumer retries the batch (shared/kafka.py). `hide_parameters` keeps bound
    values (alert text) out of every exception message and so out of every log line.
    `synchronous_commit` stays at the server default (on): a commit is on disk before the
    consumer moves its offsets (docs/architecture.md).
    """
    return create_async_engine(service_url(settings, role), pool_size=pool_size, max_overflow=10,
                               pool_recycle=POOL_RECYCLE_SECONDS, hide_parameters=True)


# The outer transaction `one_transaction` opened in this task, by engine.
_JOINED: ContextVar[dict[AsyncEngine, AsyncConnection]] = ContextVar("blonet_joined_transaction", default={})


class Sessions:
    """Opens sessions on a service's engine; inside `one_transaction(engine)` each session is a
    savepoint of that one transaction (its commit releases the savepoint, its failure rolls it back)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._make = async_sessionmaker(engine, expire_on_commit=False)
        self._autocommit = async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)

    def __call__(self) -> AsyncSession:
        outer = _JOINED.get().get(self.engine)
        if outer is None:
            return self._make()
        return self._make(bind=outer, join_transaction_mode="create_savepoint")

    def autocommit(self) -> AsyncSession:
        """A session whose every statement commits by itself: no BEGIN and COMMIT round trips, for
        work whose one write is one statement (reads before it need no snapshot of their own).
        Inside `one_transaction` it is a savepoint of that transaction, like any other session."""
        if self.engine in _JOINED.get():
            return self()
        return self._autocommit()


def make_sessionmaker(engine: AsyncEngine) -> Sessions:
    return Sessions(engine)


async def in_session(settings: Settings, service: str, work):
    """Run `work(session)` as `service` on a one-connection engine of its own, commit, close; return its result.

    For commands, setup, tests and benches: one-off work outside a running service.
    """
    engine = make_engine(settings, service, pool_size=1)
    try:
        async with make_sessionmaker(engine)() as session:
            result = await work(session)
            await session.commit()
            return result
    finally:
        await engine.dispose()


@asynccontextmanager
async def one_transaction(engine: AsyncEngine) -> AsyncIterator[None]:
    """Run the block in one transaction that commits at its end (rolls back on error): the consumer
    isolates a poison record with savepoints in it, so the poll's good records commit once."""
    async with engine.connect() as conn, conn.begin():
        token = _JOINED.set({**_JOINED.get(), engine: conn})
        try:
            yield
        finally:
            _JOINED.reset(token)


async def bootstrap(settings: Settings) -> None:
    """Create the database, and each service's role and schema, if missing (idempotent)."""
    admin_url = URL.create(
        "postgresql+asyncpg", username=settings.pg_superuser, host=settings.pg_host,
        port=settings.pg_port, database="postgres",
    )
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            exists = await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": settings.pg_database})
            if not exists:
                await conn.execute(text(f'CREATE DATABASE "{settings.pg_database}"'))
            for role in (*SERVICES, *OWNER_ROLES.values()):
                password = _password(settings, role).replace("'", "''")
                verb = "ALTER" if await conn.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}) else "CREATE"
                await conn.execute(text(f"{verb} ROLE {role} LOGIN PASSWORD '{password}'"))
    finally:
        await admin.dispose()
    db = create_async_engine(admin_url.set(database=settings.pg_database), isolation_level="AUTOCOMMIT")
    try:
        async with db.connect() as conn:
            await conn.execute(text("REVOKE ALL ON SCHEMA public FROM PUBLIC"))
            await conn.execute(text(f'REVOKE ALL ON DATABASE "{settings.pg_database}" FROM PUBLIC'))
            for role in SERVICES:
                owner = owner_role(role)
                await conn.execute(text(f'GRANT CONNECT ON DATABASE "{settings.pg_database}" TO {role}'))
                await conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {role} AUTHORIZATION {owner}"))
                await conn.execute(text(f'ALTER ROLE {role} IN DATABASE "{settings.pg_database}" SET search_path = {role}'))
                if owner != role:
                    await _hand_schema_to_owner(conn, settings, role, owner)
    finally:
        await db.dispose()


async def _hand_schema_to_owner(conn, settings: Settings, role: str, owner: str) -> None:
    """Give a service's schema, and whatever its role created there before, to the owner role."""
    await conn.execute(text(f'GRANT CONNECT ON DATABASE "{settings.pg_database}" TO {owner}'))
    await conn.execute(text(f'ALTER ROLE {owner} IN DATABASE "{settings.pg_database}" SET search_path = {role}'))
    await conn.execute(text(f"ALTER SCHEMA {role} OWNER TO {owner}"))
    await conn.execute(text(f"REASSIGN OWNED BY {role} TO {owner}"))  # tables made before the owner existed
    await conn.execute(text(f"GRANT USAGE ON SCHEMA {role} TO {role}"))



async def drop_database(settings: Settings) -> None:
    """Drop the settings' database if it exists (tests and benchmarks clean up their own)."""
    admin = create_async_engine(URL.create(
        "postgresql+asyncpg", username=settings.pg_superuser, host=settings.pg_host, port=settings.pg_port,
        database="postgres",
    ), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{settings.pg_database}" WITH (FORCE)'))
    finally:
        await admin.dispose()

def _script_config(service: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent.parent / "services" / service / "migrations"))
    return cfg


def _alembic_config(settings: Settings, service: str) -> Config:
    cfg = _script_config(service)
    cfg.attributes["url"] = service_url(settings, owner_role(service))
    cfg.attributes["schema"] = service
    return cfg


async def _at_head(settings: Settings, service: str) -> bool:
    """Return whether the service's role sees its schema at the migrations' head."""
    heads = set(ScriptDirectory.from_config(_script_config(service)).get_heads())
    engine = create_async_engine(service_url(settings, service))
    try:
        async with engine.connect() as conn:
            current = set((await conn.execute(text(f"SELECT version_num FROM {service}.alembic_version"))).scalars())
    except DBAPIError:  # no version table yet, or not readable before the owner's migrations grant it
        return False
    finally:
        await engine.dispose()
    return current == heads


async def migrate(settings: Settings, service: str) -> None:
    """Upgrade a service's schema to head (alembic runs its own loop, so in a thread).

    A schema with a separate owner is migrated as that owner, and only when behind: the service
    process finds it current (`blonet setup` migrated it) and never needs the owner's password.
    """
    if owner_role(service) != service and await _at_head(settings, service):
        return
    await asyncio.to_thread(command.upgrade, _alembic_config(settings, service), "head")


def run_migrations_env(metadata: MetaData) -> None:
    """Body of each service's alembic env.py: migrate under an advisory lock."""
    cfg = context.config
    schema = cfg.attributes["schema"]

    def _run(conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        try:
            context.configure(connection=conn, target_metadata=metadata, version_table_schema=schema)
            with context.begin_transaction():
                context.run_migrations()
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})

    async def _main() -> None:
        engine = create_async_engine(cfg.attributes["url"])
        try:
            async with engine.connect() as conn:
                await conn.run_sync(_run)
                await conn.commit()
        finally:
            await engine.dispose()

    asyncio.run(_main())
