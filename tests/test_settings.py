"""Settings: environment names, renamed names, partial instrument overrides, what children get."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from prefect.settings.models.server.database import ServerDatabaseSettings
from prefect.settings.models.server.events import ServerEventsSettings
from prefect.settings.models.server.services import ServerServicesDBVacuumSettings

from prompt_processing.model.instruments import active_detector_table
from prompt_processing.settings import (
    RENAMED_ENV,
    ActivatorSettings,
    InstrumentSettings,
    PrefectSettings,
    QueueSettings,
    RedisSettings,
    Settings,
    VisitSettings,
    export_env,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("PP_")]:
        monkeypatch.delenv(name)


def test_exported_sections_rebuild_the_same_values_in_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        redis=RedisSettings(port=1234, db=3),
        queue=QueueSettings(claim_idle_s=2.5, max_deliveries=7),
        activator=ActivatorSettings(idle_timeout_s=9.0),
        instruments={"LATISS": InstrumentSettings(only_detectors=[0])},
    )
    for name, value in export_env(settings, "redis", "queue", "activator", "instruments").items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert (child.redis, child.queue, child.activator) == (settings.redis, settings.queue, settings.activator)
    assert child.instruments == settings.instruments
    assert child.visit == VisitSettings()  # not exported: the child's own default


def test_export_names_single_fields_and_never_copies_secrets() -> None:
    settings = Settings(redis=RedisSettings(password="s3cret"), queue=QueueSettings(claim_idle_s=4.0))
    env = export_env(settings, "redis", "s3", "queue.claim_idle_s")
    assert "PP_REDIS__PASSWORD" not in env and "PP_S3__SECRET_ACCESS_KEY" not in env
    assert "s3cret" not in "".join(env.values())
    assert env["PP_QUEUE__CLAIM_IDLE_S"] == "4.0" and "PP_QUEUE__MAX_DELIVERIES" not in env


def test_an_exported_subset_of_instruments_disables_the_others_in_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    narrowed = Settings().model_copy(update={"instruments": {"LSSTCam": InstrumentSettings(only_detectors=[94])}})
    for name, value in export_env(narrowed, "instruments").items():
        monkeypatch.setenv(name, value)
    assert active_detector_table(Settings().instruments) == {"LSSTCam": (94,)}


def test_a_partial_instruments_override_changes_only_the_instruments_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_INSTRUMENTS", '{"LSSTCam": {"disabled_detectors": "production"}}')
    table = active_detector_table(Settings().instruments)
    assert set(table) == {"LSSTCam", "LATISS", "HSC"}
    assert (len(table["LSSTCam"]), len(table["LATISS"]), len(table["HSC"])) == (172, 1, 104)


def test_nested_instrument_variables_and_disabling_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_INSTRUMENTS__HSC__ENABLED", "false")
    monkeypatch.setenv("PP_INSTRUMENTS__LATISS__ONLY_DETECTORS", "[0]")
    instruments = Settings().instruments
    assert sorted(instruments) == ["HSC", "LATISS", "LSSTCam"]  # env names are lower-case; keys stay canonical
    assert active_detector_table(instruments) == {"LSSTCam": tuple(range(189)), "LATISS": (0,)}


def test_old_worker_names_still_work_and_warn_with_the_new_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_WORKER__CLAIM_IDLE_S", "12.5")
    monkeypatch.setenv("PP_WORKER__TASK_RETRIES", "0")
    monkeypatch.setenv("PP_WORKER__WORK_POOL", "old-pool")
    with pytest.warns(FutureWarning) as warned:
        settings = Settings()
    assert sorted(str(w.message).split(" (")[0] for w in warned) == [
        "PP_WORKER__CLAIM_IDLE_S is deprecated; use PP_QUEUE__CLAIM_IDLE_S",
        "PP_WORKER__TASK_RETRIES is deprecated; use PP_VISIT__STEP_RETRIES",
        "PP_WORKER__WORK_POOL is deprecated; use PP_PREFECT__WORK_POOL",
    ]
    assert (settings.queue.claim_idle_s, settings.visit.step_retries, settings.prefect.work_pool) == (
        12.5, 0, "old-pool")  # fmt: skip


def test_a_new_name_wins_over_its_old_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_WORKER__IDLE_TIMEOUT_S", "5")
    monkeypatch.setenv("PP_ACTIVATOR__IDLE_TIMEOUT_S", "9")
    with pytest.warns(FutureWarning, match="PP_WORKER__IDLE_TIMEOUT_S is ignored: PP_ACTIVATOR__IDLE_TIMEOUT_S is set"):
        assert Settings().activator.idle_timeout_s == 9.0


def test_every_renamed_variable_points_at_a_real_setting() -> None:
    for old, new in RENAMED_ENV.items():
        section, field = new.removeprefix("PP_").lower().split("__")
        assert field in type(getattr(Settings(), section)).model_fields, (old, new)


def test_bad_values_fail_with_the_setting_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_FANOUT__DEDUP_TTL_S", "10")
    with pytest.raises(ValueError, match=r"dedup_ttl_s .* must be >= message_expiration_s"):
        Settings()


@pytest.mark.parametrize("flow_run_days", [45.0, None])
def test_the_prefect_servers_settings_are_what_prefect_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flow_run_days: float | None
) -> None:
    """`PrefectSettings.server_env` in the server's environment, read back by Prefect's own settings classes."""
    prefect = PrefectSettings(database_url="postgresql+asyncpg://pp@db:5432/prefect", db_pool_size=12,
                              db_max_overflow=30, events_retention_days=3,
                              flow_run_retention_days=flow_run_days)  # fmt: skip
    for name, value in prefect.server_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    database, events, vacuum = ServerDatabaseSettings(), ServerEventsSettings(), ServerServicesDBVacuumSettings()
    assert database.connection_url is not None
    assert database.connection_url.get_secret_value() == "postgresql+asyncpg://pp@db:5432/prefect"
    assert (database.sqlalchemy.pool_size, database.sqlalchemy.max_overflow) == (12, 30)
    assert events.retention_period == timedelta(days=3)
    if flow_run_days is None:
        assert vacuum.enabled_vacuum_types == {"events"}
    else:
        assert "flow_runs" in vacuum.enabled_vacuum_types and vacuum.retention_period == timedelta(days=45)
    default = PrefectSettings().server_env(tmp_path)["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert default == f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"


def test_kafka_over_sasl_ssl_with_scram_is_librdkafkas_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """What infra/base/pp-config.env and pp-secrets set: SCRAM over TLS, a CA of the site's; the password only
    in the client's configuration, never in the settings' text."""
    for name, value in {"PP_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "PP_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
                        "PP_KAFKA__SASL_USERNAME": "prompt-processing", "PP_KAFKA__SASL_PASSWORD": "scram-secret",
                        "PP_KAFKA__SSL_CA_LOCATION": "/etc/pp/kafka-ca.pem",
                        "PP_KAFKA__BOOTSTRAP_SERVERS": "kafka.example.org:9093"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    kafka = Settings().kafka
    assert kafka.client_config() == {
        "bootstrap.servers": "kafka.example.org:9093", "security.protocol": "SASL_SSL",
        "ssl.ca.location": "/etc/pp/kafka-ca.pem", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "prompt-processing", "sasl.password": "scram-secret",
    }  # fmt: skip
    assert "scram-secret" not in repr(kafka)
    plain = kafka.model_copy(update={"security_protocol": "SASL_PLAINTEXT"})
    assert "ssl.ca.location" not in plain.client_config()  # a CA only where TLS is used
