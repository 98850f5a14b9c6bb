"""One settings object for every service, flow run and command (environment prefix ``PP_``).

Built once in each entry point's ``main()`` (a flow run's entry point is its flow function) and
passed down; nothing here reads the environment at import time. Nested sections use ``__`` in
environment names, e.g. ``PP_REDIS__PORT=6379 PP_REDIS__EMBEDDED=false`` points everything at the
machine's own Redis instead of the embedded one.

How settings reach other processes (``docs/configuration.md``): each process reads its own
``PP_*`` environment (in production a ConfigMap and Secrets); values that several processes must
agree on travel on purpose, the work-queue contract as a flow-run parameter
(``model.queue_contract``), a child's overrides through ``export_env``, which never copies secrets.

Renamed settings keep their old environment names for one release (``RENAMED_ENV``): the old
name still works and warns (``FutureWarning``) with the new one.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# Re-exported: every section is importable from here.
from prompt_processing.settings.connections import KafkaSettings as KafkaSettings
from prompt_processing.settings.connections import PrefectSettings as PrefectSettings
from prompt_processing.settings.connections import RedisSettings as RedisSettings
from prompt_processing.settings.connections import S3Settings as S3Settings


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
    dedup_ttl_s: int = Field(
        172_800,
        gt=0,
        description="How long a fanned-out (instrument, groupId) is remembered: its record de-duplicates "
        "re-sent events and lets an operator rerun its visit-detectors by (instrument, group, detector).",
    )
    stream_maxlen: int = Field(
        1_000_000, ge=10_000, description="Approximate cap of each instrument stream (XADD MAXLEN ~)."
    )
    replay_window_s: float = Field(
        900.0, ge=0, description="When Redis lost its data (restarted without persistence), the next-visit events "
        "of this last while are fanned out again: the visits in flight come back (those already done are "
        "recognised by the alerts ledger). 0: never.",
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
    """The arrival router: raw-image notifications -> presence keys and activator wake-ups."""

    group_id: str = Field("pp-router", description="Kafka consumer group of the router.")
    consumer_name: str | None = Field(None, description="Name in logs and health key; default: host name.")
    http_host: str = Field("127.0.0.1", description="Presence HTTP service bind address.")
    http_port: int = Field(18080, ge=0, le=65535, description="Presence HTTP port (0 = any free port).")
    presence_ttl_s: int = Field(86_400, ge=60, description="How long a landed image is remembered.")
    replay_window_s: float = Field(
        900.0, ge=0, description="When Redis lost its data, the notifications of this last while are routed again "
        "(the images of visits in flight are found again). 0: never.",
    )
    s3_read_timeout_s: float = Field(
        2.0, gt=0, le=60, description="Timeout of one sidecar read; a failed read is retried later (deferred, in "
        "Redis), never holding up the notifications behind it.",
    )
    batch_size: int = Field(100, ge=1, le=10_000)
    poll_timeout_s: float = Field(0.5, gt=0)
    health_ttl_s: int = Field(15, ge=2)
    shutdown_deadline_s: float = Field(20.0, gt=0)


class RetrySettings(BaseModel):
    """The one retry policy for calls to Redis, Kafka, S3, the databases and the Prefect API (``adapters.retry``).

    Only failures ``model.failures`` classes as transient (or as a refusal of our configuration) are
    retried; a permanent one goes to the message's dead-letter destination. The pause after a failed
    try starts at ``first_delay_s`` and doubles up to ``max_delay_s``, plus up to ``jitter_s`` at
    random. A service never skips a message: it retries until the call succeeds or it is asked to
    stop; a call failing longer than ``outage_alarm_s`` is an outage (an ERROR line, the health
    record says unhealthy, ``--check`` fails) until it recovers.
    """

    first_delay_s: float = Field(0.1, gt=0, le=60, description="Pause after the first failed try.")
    max_delay_s: float = Field(2.0, gt=0, le=600, description="Longest pause between two tries (the capped interval).")
    jitter_s: float = Field(
        0.25, ge=0, le=60, description="Random extra pause, up to this, so clients do not retry in step."
    )
    outage_alarm_s: float = Field(
        15.0, gt=0, description="A call failing this long is an outage: logged as such, health turns unhealthy."
    )
    redis_attempts: int = Field(
        3, ge=1, le=20, description="Tries of one Redis command inside the client (redis-py Retry, on connection "
        "errors and timeouts) before the caller's policy sees the failure.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> RetrySettings:
        if self.max_delay_s < self.first_delay_s:
            raise ValueError(f"max_delay_s ({self.max_delay_s}) must be >= first_delay_s ({self.first_delay_s})")
        return self


class QueueSettings(BaseModel):
    """The work-queue contract: what the autoscaler and every activator of an instrument agree on.

    The autoscaler hands these values to the activator runs it creates (flow parameter ``queue``);
    an activator started without that parameter reads them here.
    """

    claim_idle_s: float = Field(
        30.0, gt=0, description="A pending entry idle this long is a dead activator's: counted and reclaimed."
    )
    max_deliveries: int = Field(
        5, ge=1, description="Attempts (deliveries) before an entry goes to the dead-letter stream; with the "
        "default retry_delay_s the attempts span over a minute, so a shorter outage dead-letters nothing.",
    )
    retry_delay_s: float = Field(
        5.0, gt=0, description="An attempt that failed retriably is retried this long after (doubling with each "
        "attempt, jittered, at most claim_idle_s), by any activator.",
    )


class ActivatorSettings(BaseModel):
    """One activator flow run (a warm worker): how it reads and when it exits."""

    block_s: float = Field(1.0, gt=0, le=30, description="Longest XREADGROUP BLOCK per loop turn.")
    idle_timeout_s: float = Field(60.0, gt=0, description="An activator with no work this long exits.")
    max_visits: int = Field(
        200, ge=1, description="An activator exits after this many visit-detectors (memory hygiene: its RSS grows "
        "~110 MiB per 1000; the memory soak in BENCHMARKS.md keeps it within 10% of warm-up up to 300).",
    )


class VisitSettings(BaseModel):
    """The steps of one visit-detector (preload, wait_for_images, process, publish), wherever they run."""

    image_wait_exposures: float = Field(
        2.0, ge=0, description="The wait for a visit's images lasts this many exposure times plus image_timeout_s, "
        "counted from the shutter opening (Rubin's rule: exposure x 2 + 120 s).",
    )
    image_timeout_s: float = Field(
        120.0, ge=0, description="Extra wait for images beyond image_wait_exposures x exposure, counted from the "
        "shutter opening: an object-store or transfer outage shorter than this loses no visit.",
    )
    step_retries: int = Field(2, ge=0, description="Retries of a step on a retriable error.")
    step_retry_delay_s: float = Field(0.5, ge=0, description="Pause before a step's retry.")
    tag_task_runs: bool = Field(
        False,
        description="Tag each visit-detector task run instrument:<name>. Prefect checks a tagged task run's tags "
        "for concurrency limits with one API call: ~4 ms on PostgreSQL, but stalls of ~2 s on the embedded SQLite "
        "server (measured). Group and detector are in the run's name either way.",
    )
    step_task_runs: bool = Field(
        True,
        description="Run each step (preload, wait_for_images, process, publish) as a task run of its own under "
        "the visit-detector's. Off, the steps run inline (same retries, same outcome, step timings still in "
        "the outcome's artifact): 1 task run per visit-detector instead of 5, and ~60% less Prefect server CPU "
        "(BENCHMARKS.md, 'Capacity of the orchestration tier'); for LSSTCam-scale nights.",
    )
    results_retention_s: float = Field(
        259_200, gt=0, description="How long outcome records stay in the results streams (night reports read them)."
    )


class ButlerSettings(BaseModel):
    """The central Butler repository (workers read it; only the Butler writer writes its registry),
    the activators' local repositories, and the Butler writer service."""

    central_repo: str | None = Field(
        None,
        description="URI of the central repository (the directory of its butler.yaml). Default: "
        "<stack.state_dir>/butler/central, made absolute (SQLite registry, files beside it). Production: "
        "s3://<bucket>/<repo> made by `pp butler init --registry-db postgresql+psycopg://...`.",
    )
    local_root: Path | None = Field(
        None, description="Scratch directory for the activators' local repositories (a pod's emptyDir); "
        "default: <system temp>/pp-local-butler.",
    )  # fmt: skip
    region_padding_arcsec: float = Field(
        30.0, ge=0, le=3600, description="Margin added around a detector's predicted sky region when preloading."
    )
    calib_cache_entries: int = Field(
        400, ge=0, description="Calibration datasets a warm activator keeps in its local repository."
    )
    template_cache_entries: int = Field(
        0, ge=0, description="Templates and refcat shards a warm activator keeps (0: transfer per visit)."
    )
    compress_images: bool = Field(
        False,
        description="Tile-compress (lossless GZIP_2) the images an activator writes (raws in its local repository, "
        "exported outputs). Measured: ~0.27 s per 2048 x 2048 image, most of a put; off by default.",
    )
    writer_group_id: str = Field("pp-butler-writer", description="Kafka consumer group of the Butler writer.")
    writer_name: str | None = Field(None, description="Name in logs and health key; default: host name.")
    writer_batch_size: int = Field(200, ge=1, le=10_000, description="Most pp-output events per registry transaction.")
    writer_max_wait_s: float = Field(1.0, gt=0, le=60, description="Longest wait to fill a batch once one event came.")
    writer_health_ttl_s: int = Field(15, ge=2, description="TTL of the health key the Butler writer refreshes.")
    writer_shutdown_deadline_s: float = Field(30.0, gt=0, description="SIGTERM: finish the batch within this.")


class ApdbSettings(BaseModel):
    """The Alert Production Database (lsst-dax-apdb's ``ApdbSql``): DiaObjects and DiaSources. A
    visit-detector in it is processed: its alerts are not sent again."""

    db_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the APDB. Default: SQLite at <stack.state_dir>/apdb/apdb.sqlite3 "
        "(absolute). Production: postgresql://user@host/db (driven by psycopg2), created by `pp apdb init`.",
    )
    namespace: str | None = Field(None, description="PostgreSQL schema of the APDB tables (default: the search path).")
    association_radius_arcsec: float = Field(
        1.0, gt=0, le=10, description="A DiaSource joins the nearest DiaObject within this; otherwise it starts one."
    )
    prior_sources_months: int = Field(
        12, ge=0, le=120, description="History of DiaSources read for association and alerts (0: none)."
    )
    connection_timeout_s: int = Field(10, ge=1, le=300, description="Database connection timeout.")


class AlertSettings(BaseModel):
    """The alerts: lsst-alert-packet's Avro schema, Confluent wire framing, one per DiaSource."""

    schema_version: str | None = Field(
        None, description="lsst-alert-packet schema version, e.g. '11.1' (default: the package's latest)."
    )
    cutout_size_px: int = Field(31, ge=5, le=301, description="Side of the science, template and difference cutouts.")
    max_per_detector: int = Field(
        2000, ge=1, le=65_535,
        description="Most DiaSources a visit-detector may have; more is a failed visit (a bad subtraction), not "
        "a flood of alerts.",
    )  # fmt: skip


class PipelineRule(BaseModel):
    """Visits whose survey (and, if given, position) match get these pipelines, tried in order."""

    survey: str = Field(description="fnmatch pattern of the NextVisit's survey; '' matches an empty survey only.")
    pipelines: list[str] = Field(
        description="Names of the instrument's pipelines (prompt_processing/pipelines/data/<instrument>/<name>.yaml), "
        "tried in order while one cannot be built; [] ignores the visit."
    )
    ra_deg: tuple[float, float] | None = Field(None, description="Only visits pointed within [min, max] RA.")
    dec_deg: tuple[float, float] | None = Field(None, description="Only visits pointed within [min, max] Dec.")


def _default_pipeline_rules() -> list[PipelineRule]:
    fallbacks = ["ApPipe", "SingleFrame", "Isr"]
    return [PipelineRule(survey="BLOCK-*", pipelines=fallbacks), PipelineRule(survey="LSST-*", pipelines=fallbacks),
            PipelineRule(survey="", pipelines=[])]  # fmt: skip


class PipelinesSettings(BaseModel):
    """Which pipelines a visit gets: the first rule it matches, Rubin-style (survey -> pipelines to try)."""

    rules: list[PipelineRule] = Field(
        default_factory=_default_pipeline_rules,
        description='Ordered rules, e.g. [{"survey": "BLOCK-*", "pipelines": ["ApPipe", "SingleFrame", "Isr"]}].',
    )
    unmatched: Literal["ignore", "fail"] = Field(
        "ignore", description="A visit no rule matches: ignored (acknowledged, reported with the reason) or failed."
    )


class AutoscalerSettings(BaseModel):
    """`pp autoscale`: KEDA ScaledJob semantics for the activator flow runs (prompt_processing/autoscaler/)."""

    spec_file: Path = Field(
        Path("deployments/autoscaler.yaml"), description="ScaledJob-like specs, one per instrument."
    )
    name: str | None = Field(None, description="This process's name in logs and its health key; default: host name.")
    wake_on_entries: bool = Field(
        True,
        description="Also decide the moment entries land (a blocking XREAD on the stream tails), not only every "
        "pollingInterval; false = KEDA's polling only.",
    )
    set_work_pool_limit: bool = Field(
        False,
        description="At start-up, set each work pool's concurrency limit to the sum of maxReplicaCount of the "
        "specs whose deployments use it, so a Prefect worker never runs more, even runs created by hand.",
    )
    emit_unchanged: bool = Field(
        False,
        description="Emit a Prefect event for every decision; by default only for decisions that create runs "
        "or differ from the instrument's previous one (every decision is logged either way).",
    )
    stale_scan_limit: int = Field(10_000, ge=1, description="Most stale pending entries counted per decision.")
    create_attempts: int = Field(
        3, ge=1, description="Tries per flow-run creation within a decision (same idempotency key each time)."
    )
    create_concurrency: int = Field(
        4, ge=1, le=64, description="Most creation requests of one instrument in flight at once (each instrument "
        "has its own allowance, so one's burst never waits on another's)."
    )
    prefect_timeout_s: float = Field(10.0, gt=0, description="Timeout of one Prefect API call.")
    health_ttl_s: int = Field(15, ge=2, description="TTL of the health key the autoscaler refreshes.")


class ReporterSettings(BaseModel):
    """`pp reporter`: the nights' artifacts and the activators' metrics, from the results streams."""

    name: str | None = Field(None, description="This process's name in logs and its health key; default: host name.")
    artifact_every_s: float = Field(10.0, gt=0, description="Most often a night's artifacts get a new version.")
    table_rows: int = Field(2000, ge=10, le=100_000, description="Rows of a night's table artifact (failures first).")
    keep_nights: int = Field(2, ge=1, le=7, description="Nights kept in memory (tonight and the ones before).")
    block_s: float = Field(1.0, gt=0, le=30, description="Longest wait for new outcomes per loop turn.")
    health_ttl_s: int = Field(15, ge=2, description="TTL of the health key the reporter refreshes.")


class MetricsSettings(BaseModel):
    """Prometheus endpoints (``GET /metrics``) of the long-running services; a port of 0 picks a free one."""

    enabled: bool = Field(True, description="Serve the metrics endpoints.")
    host: str = Field("127.0.0.1", description="Bind address (0.0.0.0 in a pod, so Prometheus can scrape it).")
    fanout_port: int = Field(19101, ge=0, le=65535)
    router_port: int = Field(19102, ge=0, le=65535)
    autoscaler_port: int = Field(19103, ge=0, le=65535)
    reporter_port: int = Field(19104, ge=0, le=65535)
    butler_writer_port: int = Field(19105, ge=0, le=65535)


class StackSettings(BaseModel):
    """The embedded stack started by `pp stack up` (dev kit only)."""

    state_dir: Path = Field(Path(".pp"), description="pid files, logs and data of the embedded stack.")
    start_timeout_s: float = Field(90.0, gt=0, description="Longest wait for one service to be healthy.")
    stop_timeout_s: float = Field(15.0, gt=0, description="Wait after SIGTERM before SIGKILL.")
    redis_admin_password: SecretStr | None = Field(
        None, description="With redis.username set: password of the embedded Redis's pp-admin user (the stack's "
        "own checks and maintenance; services never use it). The default user is then disabled.",
    )


DEFAULT_INSTRUMENTS = ("LSSTCam", "LATISS", "HSC")


def _default_instruments() -> dict[str, InstrumentSettings]:
    return {name: InstrumentSettings() for name in DEFAULT_INSTRUMENTS}


RENAMED_ENV: dict[str, str] = {
    "PP_WORKER__WORK_POOL": "PP_PREFECT__WORK_POOL",
    "PP_WORKER__CLAIM_IDLE_S": "PP_QUEUE__CLAIM_IDLE_S",
    "PP_WORKER__MAX_DELIVERIES": "PP_QUEUE__MAX_DELIVERIES",
    "PP_WORKER__BLOCK_S": "PP_ACTIVATOR__BLOCK_S",
    "PP_WORKER__IDLE_TIMEOUT_S": "PP_ACTIVATOR__IDLE_TIMEOUT_S",
    "PP_WORKER__MAX_VISITS": "PP_ACTIVATOR__MAX_VISITS",
    "PP_WORKER__IMAGE_TIMEOUT_S": "PP_VISIT__IMAGE_TIMEOUT_S",
    "PP_WORKER__TASK_RETRIES": "PP_VISIT__STEP_RETRIES",
    "PP_WORKER__TASK_RETRY_DELAY_S": "PP_VISIT__STEP_RETRY_DELAY_S",
    "PP_AUTOSCALER__CREATE_RETRY_DELAY_S": "PP_RETRY__FIRST_DELAY_S",
    "PP_S3__CENTRAL_BUCKET": "PP_S3__TRUTH_BUCKET",
}
"""Old environment name -> new one. Old names work for one more release, with a FutureWarning."""


class RenamedEnvSource(PydanticBaseSettingsSource):
    """Reads the old names of ``RENAMED_ENV`` into their new places; a new name set too wins."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything happens in __call__

    def __call__(self) -> dict[str, Any]:
        environ = {k.upper(): v for k, v in os.environ.items() if k.upper().startswith("PP_")}
        values: dict[str, Any] = {}
        for old, new in RENAMED_ENV.items():
            if old not in environ:
                continue
            if new in environ:
                warnings.warn(f"{old} is ignored: {new} is set (and {old} is a deprecated name)", FutureWarning,
                              stacklevel=2)  # fmt: skip
                continue
            warnings.warn(f"{old} is deprecated; use {new} (the old name goes in the next release)", FutureWarning,
                          stacklevel=2)  # fmt: skip
            section, field = new.removeprefix("PP_").lower().split("__")
            values.setdefault(section, {})[field] = environ[old]
        return values


class Settings(BaseSettings):
    """Everything configurable, from the environment (``PP_*``) or keyword arguments."""

    model_config = SettingsConfigDict(env_prefix="PP_", env_nested_delimiter="__", extra="forbid")

    redis: RedisSettings = RedisSettings()
    kafka: KafkaSettings = KafkaSettings()
    s3: S3Settings = S3Settings()
    prefect: PrefectSettings = PrefectSettings()
    retry: RetrySettings = RetrySettings()
    fanout: FanoutSettings = FanoutSettings()
    router: RouterSettings = RouterSettings()
    queue: QueueSettings = QueueSettings()
    activator: ActivatorSettings = ActivatorSettings()
    visit: VisitSettings = VisitSettings()
    butler: ButlerSettings = ButlerSettings()
    apdb: ApdbSettings = ApdbSettings()
    alerts: AlertSettings = AlertSettings()
    pipelines: PipelinesSettings = PipelinesSettings()
    autoscaler: AutoscalerSettings = AutoscalerSettings()
    reporter: ReporterSettings = ReporterSettings()
    metrics: MetricsSettings = MetricsSettings()
    stack: StackSettings = StackSettings()
    instruments: dict[str, InstrumentSettings] = Field(
        default_factory=_default_instruments,
        description="Per-instrument detector selection. A partial value changes only the instruments it names "
        "(the others keep their defaults); disable one with {\"HSC\": {\"enabled\": false}}.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text", description="text: one plain line per record; json: one JSON object per line, with structured fields."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, RenamedEnvSource(settings_cls), dotenv_settings, file_secret_settings

    @field_validator("instruments", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any) -> Any:
        """Merge a partial value over the default instruments (keys matched case-insensitively)."""
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = dict(_default_instruments())
        canonical = {name.lower(): name for name in merged}
        for key, config in value.items():
            merged[canonical.get(str(key).lower(), str(key))] = config
        return merged

    @model_validator(mode="after")
    def _state_dir_defaults(self) -> Settings:
        """The embedded defaults of the central repository and the APDB, under the stack's state directory, absolute
        (so processes started elsewhere, and ``export_env``, agree on it)."""
        if self.butler.central_repo is None:
            central = str((self.stack.state_dir / "butler" / "central").resolve())
            self.butler = self.butler.model_copy(update={"central_repo": central})
        if self.apdb.db_url is None:
            path = (self.stack.state_dir / "apdb" / "apdb.sqlite3").resolve()
            self.apdb = self.apdb.model_copy(update={"db_url": f"sqlite:///{path}"})
        return self


FLOW_RUN_SECTIONS = (
    "redis", "retry", "kafka", "s3", "queue", "activator", "visit", "butler", "apdb", "alerts", "pipelines",
)  # fmt: skip
"""The sections a flow run (activator, rerun) reads from its own environment: in production the
work pool's job template gives them (ConfigMap and Secrets); locally the Prefect worker's environment."""


def export_env(settings: Settings, *paths: str) -> dict[str, str]:
    """``PP_*`` variables that give a child process these values of ``settings``, chosen on purpose.

    ``paths`` name sections (``"redis"``, ``"instruments"``) or fields (``"queue.claim_idle_s"``).
    Secret fields are never exported: a child takes credentials from its own environment or secret
    store. ``"instruments"`` is exported whole: default instruments missing from ``settings`` are
    exported disabled, so the child serves exactly the same ones.
    """
    env: dict[str, str] = {}
    for path in paths:
        section, _, field = path.partition(".")
        value = getattr(settings, section)
        if section == "instruments":
            full = {name: InstrumentSettings(enabled=False) for name in DEFAULT_INSTRUMENTS} | value
            env["PP_INSTRUMENTS"] = json.dumps({k: v.model_dump(mode="json") for k, v in full.items()})
        elif not isinstance(value, BaseModel):
            env[f"PP_{section.upper()}"] = _env_value(value)
        else:
            fields = [field] if field else list(type(value).model_fields)
            for name in fields:
                inner = getattr(value, name)
                if inner is not None and not isinstance(inner, SecretStr):
                    env[f"PP_{section.upper()}__{name.upper()}"] = _env_value(inner)
    return env


def _env_value(value: object) -> str:
    if isinstance(value, str | Path):
        return str(value)
    return json.dumps(value, default=lambda model: model.model_dump(mode="json"))  # lists of models too
