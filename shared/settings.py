"""Typed settings for every BLOnet process, read from BLONET_* environment variables."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parent.parent
DEV_DB_PASSWORD_PREFIX = "dev-"


class Settings(BaseSettings):
    """One settings object; each service reads the fields it needs."""

    model_config = SettingsConfigDict(env_prefix="BLONET_", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    node_id: str = "blonet-local"  # origin node stamped on every event (federation-ready)

    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = ""  # lets tests run isolated topic sets on one broker
    fetch_max_wait_ms: int = 10  # consumers on the accept-to-delivery path
    background_fetch_max_wait_ms: int = 200  # consumers off it (audit, status views, acks)

    pg_host: str = "127.0.0.1"
    pg_port: int = 5433
    pg_database: str = "blonet"
    pg_superuser: str = "postgres"  # used only by `blonet db bootstrap`
    db_password: str | None = None  # the current service role's password; dev default below
    db_owner_password: str | None = None  # audit_owner's: only `blonet setup` (migrations) needs it

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
            if self.db_password is None or self.db_password.startswith(DEV_DB_PASSWORD_PREFIX):
                raise ValueError("BLONET_DB_PASSWORD must be set to a real secret in production")
            if self.allow_insecure_webhooks:
                raise ValueError("BLONET_ALLOW_INSECURE_WEBHOOKS must be false in production")
            if self.token_private_key_file.is_relative_to(REPO / "var"):
                raise ValueError("BLONET_TOKEN_*_KEY_FILE must point outside the dev key folder")
        return self

    def password_for(self, role: str) -> str:
        """Return the database password of a service role (dev default outside production)."""
        return self.db_password or f"{DEV_DB_PASSWORD_PREFIX}{role}"

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
