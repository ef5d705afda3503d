"""Typed settings for every BLOnet process, read from BLONET_* environment variables."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parent.parent
DEV_DB_PASSWORD_PREFIX = "dev-"
KAFKA_ADMIN = "admin"  # the Kafka super user: setup, tests, benches and the CLI; services use their own
DB_ROLES = ("gateway", "routing", "notifier", "audit")


class SecretsError(RuntimeError):
    """A credential is missing or unreadable; the message names the setting to fix."""


class Settings(BaseSettings):
    """One settings object; each service reads the fields it needs."""

    model_config = SettingsConfigDict(env_prefix="BLONET_", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    node_id: str = "blonet-local"  # origin node stamped on every event (federation-ready)

    kafka_bootstrap: str = "127.0.0.1:9092"
    # Kafka login (docs/security.md): SASL/SCRAM-SHA-512 as `kafka_username` (unset: admin; each
    # service process sets its own name, services/*/__main__.py) with `kafka_password`, else the
    # password the secrets file holds for that principal. Unset protocol: SASL when a password is
    # found, else PLAINTEXT (refused in production). SASL_SSL verifies the broker with the CA file.
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    kafka_username: str | None = None
    kafka_password: str | None = Field(None, repr=False)
    kafka_ssl_cafile: Path | None = None
    # {"kafka": {"<principal>": "<password>"}, "db": {"<role>": "<password>"}}: one file per host,
    # holding only what that host's processes need (the local stack writes its Kafka part:
    # var/stack/kafka/secrets.json, read by default when present).
    secrets_file: Path | None = REPO / "var" / "stack" / "kafka" / "secrets.json"
    topic_prefix: str = ""  # lets tests run isolated topic sets on one broker
    fetch_max_wait_ms: int = 10  # consumers on the accept-to-delivery path
    background_fetch_max_wait_ms: int = 200  # consumers off it (status views, acks)
    # Off the delivery path the broker holds a fetch until this much is there or the wait is over,
    # so under load those consumers make a few full polls (one transaction each) a second, not one
    # per record that happens to arrive.
    background_fetch_min_bytes: int = 1024 * 1024
    status_fetch_max_wait_ms: int = 50  # the gateway's status projection: read by operators right after a 202
    # Audit is off the delivery path and appends once per poll: a longer wait means fewer, fuller
    # polls (and idle fetches), a record still logged well within a second.
    audit_fetch_max_wait_ms: int = 500
    audit_max_records: int = 500  # records per poll, all appended in one transaction
    # A consumer that has seen no record for `idle_after_seconds` long-polls with this wait instead
    # of its own, so an idle system does not fetch 100 times a second (see shared.kafka.EventConsumer). The broker
    # answers such a fetch at the first record, so a long wait delays nothing that arrives.
    idle_fetch_max_wait_ms: int = 2_000
    idle_after_seconds: float = 5.0

    pg_host: str = "127.0.0.1"
    pg_port: int = 5433
    pg_database: str = "blonet"
    pg_superuser: str = "postgres"  # used only by `blonet db bootstrap`
    # One login per service role (`blonet setup` creates them): BLONET_DB_<SERVICE>_PASSWORD, else the
    # secrets file's db.<role>; outside production a missing one is the dev default "dev-<role>".
    db_gateway_password: str | None = Field(None, repr=False)
    db_routing_password: str | None = Field(None, repr=False)
    db_notifier_password: str | None = Field(None, repr=False)
    db_audit_password: str | None = Field(None, repr=False)
    db_owner_password: str | None = Field(None, repr=False)  # audit_owner's: only `blonet setup` (migrations) needs it

    token_private_key_file: Path = REPO / "var" / "keys" / "token-signing.pem"
    token_public_key_file: Path = REPO / "var" / "keys" / "token-signing.pub.pem"
    token_ttl_seconds: int = 900

    network_dir: Path = REPO / "deploy" / "network"
    # The node's CAP signing key and certificate (PEM): outgoing CAP (?format=cap, endpoints with
    # sign_cap) carries its XML signature; GET /v1/node/cap-certificate serves the certificate. Unset: unsigned.
    cap_signing_key_file: Path | None = None
    cap_signing_certificate_file: Path | None = None

    # Audit: the checkpoint signing key (`blonet audit keygen`); unset: beside the token key,
    # generated on first start outside production. The origin names the log in its checkpoints.
    audit_signing_key_file: Path | None = None
    audit_origin: str | None = None  # default "<node_id>/audit"
    checkpoint_interval_seconds: float = 10.0  # sign a checkpoint this often when the log grew; 0: on demand only
    payload_retention_days: float = 365.0  # payloads (not entries) are erased after this long

    bind_host: str = "127.0.0.1"  # loopback only, except inside a container network
    gateway_port: int = 8000
    routing_port: int = 8001
    notifier_port: int = 8002
    audit_port: int = 8003
    public_base_url: str = "http://127.0.0.1:8000"
    demo_inbox_port: int = 8100
    # Where the gateway (console) and the CLI reach the other services; unset: loopback on their ports.
    routing_url: str | None = None
    notifier_url: str | None = None
    audit_url: str | None = None

    # Traces: W3C trace context always travels on the events; spans are exported only when an
    # OTLP/HTTP endpoint is set (e.g. http://127.0.0.1:4318). The console links a trace id to
    # trace_url_template (e.g. http://127.0.0.1:16686/trace/{trace_id}) when it is set.
    otlp_endpoint: str | None = None
    trace_url_template: str | None = None
    # The audit log's public C2SP vkey, pinned here for the console's "verified" mark (unset: nothing
    # is marked verified). Never read from the file below, which audit itself writes for local readers
    # (default: beside its signing key, as <key>.vkey): that would let the audit host vouch for itself.
    audit_verifier_key: str | None = None
    audit_verifier_key_file: Path | None = None
    console_session_seconds: int = 8 * 3600  # an operator's console login lasts at most this long

    accept_timeout_seconds: float = 5.0  # the gateway answers 503 if Kafka has not acked by then
    max_body_bytes: int = 256 * 1024  # every service answers 413 above this, before reading the body
    rate_limit_per_second: float = 50.0  # per API key and gateway instance; 429 with Retry-After above it
    rate_limit_burst: int = 100
    max_streams_per_key: int = 5  # open SSE streams per API key and gateway instance; 429 above it
    stream_recheck_seconds: float = 15.0  # how often an open stream checks that its caller may still read it
    idempotency_ttl_hours: int = 48  # Idempotency-Key records are kept at least this long (>= 24)
    reject_expired_alerts: bool = True  # 422 for an alert whose `expires` is past (off only to replay old traffic)
    webhook_timeout_seconds: float = 10.0
    # Comparable to Svix: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, 24 h (about two days in all).
    retry_schedule_seconds: list[float] = [5, 300, 1800, 7200, 18000, 36000, 36000, 86400]
    allow_insecure_webhooks: bool = True  # plain http only to loopback; refused in production
    # Hosts, addresses and networks (CIDR) the notifier may send to although they are internal
    # (loopback, private, link-local…): a URL's host as written and every address it resolves to
    # must both be listed (docs/security.md). Unset: 127.0.0.1 outside production, none in production.
    egress_allow_list: list[str] | None = None
    circuit_failure_threshold: int = 5  # consecutive failures that open an endpoint's circuit
    circuit_cooldown_seconds: float = 30.0  # open circuit: one probe after this long
    endpoint_rate_per_second: float = 50.0  # per endpoint and notifier instance
    endpoint_burst: int = 50
    # Requests in flight at once to an endpoint that opts out of in-order delivery (directory:
    # `in_order: false`); in-order endpoints (the default) have one.
    endpoint_window: int = 4
    # A delivery in flight this long (and the queue behind it) is parked in the retry table, so the
    # partition's offset can move on; so is a queue that sends nothing for this long (docs/delivery.md).
    park_after_seconds: float = 2.0
    # Test only: SIGKILL the notifier after its POSTs and before its group commit, once (the hook
    # writes this file first, and does not fire while it exists). Refused in production.
    notifier_crash_marker: Path | None = None
    secret_overlap_seconds: float = 86_400.0  # after a rotation, both secrets sign for this long
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_sender: str = "blonet@localhost"
    smtp_starttls: bool = False
    # Acknowledgement deadlines by urgency, in seconds, overriding the directory's per-agency minutes.
    ack_deadlines_seconds: dict[str, float] = {}

    log_level: str = "INFO"

    @model_validator(mode="after")
    def _refuse_dev_secrets_outside_development(self) -> Settings:
        if self.environment == "production":
            for role in (*DB_ROLES, "owner"):
                if (getattr(self, f"db_{role}_password") or "").startswith(DEV_DB_PASSWORD_PREFIX):
                    raise ValueError(f"BLONET_DB_{role.upper()}_PASSWORD must be a real secret in production, not a dev default")
            if self.kafka_security_protocol == "PLAINTEXT":
                raise ValueError("BLONET_KAFKA_SECURITY_PROTOCOL must be SASL_PLAINTEXT or SASL_SSL in production")
            if self.notifier_crash_marker is not None:
                raise ValueError("BLONET_NOTIFIER_CRASH_MARKER is a test hook; unset it in production")
            if self.allow_insecure_webhooks:
                raise ValueError("BLONET_ALLOW_INSECURE_WEBHOOKS must be false in production")
            if self.token_private_key_file.is_relative_to(REPO / "var"):
                raise ValueError("BLONET_TOKEN_*_KEY_FILE must point outside the dev key folder")
        return self

    def _secrets(self, section: str) -> dict[str, str]:
        """One section of the secrets file ({} when none is set or there; a missing password is then
        reported by whoever needs it, naming both settings)."""
        path = self.secrets_file
        if path is None or not path.exists():
            return {}
        try:
            return json.loads(path.read_text()).get(section, {})
        except (OSError, ValueError) as exc:
            raise SecretsError(f"BLONET_SECRETS_FILE {path}: cannot read it ({exc.__class__.__name__})") from None

    def password_for(self, role: str) -> str:
        """Return the database password of a service role: its own setting, else the secrets file's,
        else (outside production only) the dev default."""
        explicit = getattr(self, f"db_{role}_password", None) if role in DB_ROLES else None
        found = explicit or self._secrets("db").get(role)
        if found:
            return found
        if self.environment == "production":
            raise SecretsError(f"BLONET_DB_{role.upper()}_PASSWORD (or db.{role} in BLONET_SECRETS_FILE) must be set in production")
        return f"{DEV_DB_PASSWORD_PREFIX}{role}"

    def kafka_login(self) -> tuple[str, str] | None:
        """Return this process's Kafka (principal, password), or None for an unauthenticated client."""
        user = self.kafka_username or KAFKA_ADMIN
        if self.kafka_security_protocol == "PLAINTEXT":
            return None
        known = {} if self.kafka_password else self._secrets("kafka")
        password = self.kafka_password or known.get(user)
        # Unset protocol: SASL when any Kafka credential is configured (and always in production).
        if not (self.kafka_security_protocol or password or known or self.environment == "production"):
            return None
        if password is None:
            raise SecretsError(f"no Kafka password for principal {user}: set BLONET_KAFKA_PASSWORD "
                               f"or kafka.{user} in BLONET_SECRETS_FILE ({self.secrets_file})")
        return user, password

    def for_service(self, service: str) -> Settings:
        """These settings as service `service` runs with them: its own Kafka principal unless one is set."""
        return self if self.kafka_username else self.model_copy(update={"kafka_username": service})

    def service_url(self, service: Literal["gateway", "routing", "notifier", "audit"]) -> str:
        """Return the base URL of a service: its *_url setting, else loopback on its port."""
        if service == "gateway":
            return self.public_base_url.rstrip("/")
        explicit = getattr(self, f"{service}_url")
        return (explicit or f"http://127.0.0.1:{getattr(self, f'{service}_port')}").rstrip("/")

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
