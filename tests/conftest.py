"""Fixtures: one real embedded Redis and Kafka-protocol broker per test session.

Both run on free loopback ports with state in a temporary directory, so tests never touch
the machine's own Redis (6379) or a developer's `pp stack`. Each test gets a clean Redis
database and its own Kafka topics and consumer group.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from pp_devkit.postgres import fresh_database
from pp_devkit.stack import Stack, free_port
from pp_devkit.stack_services import admin_redis
from prompt_processing.adapters.kafka import ensure_topics
from prompt_processing.settings import (
    FanoutSettings,
    InstrumentSettings,
    KafkaSettings,
    MetricsSettings,
    PrefectSettings,
    RedisSettings,
    RouterSettings,
    S3Settings,
    Settings,
    StackSettings,
)

for _name in [n for n in os.environ if n.startswith(("PP_", "PREFECT_"))]:
    del os.environ[_name]  # a developer's PP_* or Prefect profile must not leak into the tests

# The session's Redis has an ACL user for the services, limited as in production, with these credentials,
# given to every process of the session (services in threads, flow runs in child processes) through the
# environment, as a Secret would; the fixtures' own client is the stack's administrator.
REDIS_USER, REDIS_PASSWORD, REDIS_ADMIN_PASSWORD = "pp-services", secrets.token_urlsafe(24), secrets.token_urlsafe(24)
os.environ["PP_REDIS__USERNAME"], os.environ["PP_REDIS__PASSWORD"] = REDIS_USER, REDIS_PASSWORD


# Prefect reads its settings once, at import: point every flow run of the session (threads and
# child processes alike) at the session's own server before any test module imports prefect.
PREFECT_PORT = free_port()
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{PREFECT_PORT}/api"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="pp-prefect-home-")


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The session's stack. Its Prefect server runs on PostgreSQL (a throwaway database on the machine's
    server), as production's does; the embedded default, SQLite, is what `pp demo` runs (tests/test_secrets.py)."""
    state_dir: Path = tmp_path_factory.mktemp("pp-stack")
    no_metrics = MetricsSettings(fanout_port=0, router_port=0, autoscaler_port=0, reporter_port=0, butler_writer_port=0)
    with fresh_database("pp_test_prefect") as prefect_db:
        settings = Settings(
            redis=RedisSettings(port=free_port(), username=REDIS_USER, password=SecretStr(REDIS_PASSWORD)),
            kafka=KafkaSettings(port=free_port()),
            s3=S3Settings(port=free_port()),
            prefect=PrefectSettings(port=PREFECT_PORT, database_url=prefect_db.replace("+psycopg", "+asyncpg")),
            router=RouterSettings(http_port=0),
            metrics=no_metrics,
            stack=StackSettings(state_dir=state_dir, redis_admin_password=SecretStr(REDIS_ADMIN_PASSWORD)),
        )
        stack = Stack(settings)
        try:
            stack.up(["redis", "kafka", "s3"])
            yield settings
        finally:
            stack.down()


@pytest.fixture(scope="session")
def prefect_server(stack_settings: Settings) -> str:
    """The session's Prefect server (started on first use, ~20 s), as its API URL."""
    Stack(stack_settings).up(["prefect"])
    return stack_settings.prefect.url


@pytest.fixture
def settings(stack_settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> Settings:
    """Settings with this test's own topics, group and APDB (a SQLite file, made by ``pp_devkit.night``'s
    seeding); LSSTCam uses production's disabled list."""
    tag = uuid.uuid4().hex[:8]
    topics = {name: f"{name.replace('_topic', '')}-{tag}" for name in _TOPIC_FIELDS}
    settings = stack_settings.model_copy(
        update={
            "kafka": stack_settings.kafka.model_copy(update=topics),
            "s3": stack_settings.s3.model_copy(
                update={"raw_bucket": f"raw-{tag}", "truth_bucket": f"truth-{tag}"}
            ),
            # No replay at a service's first start (its Redis marker is missing then): the replay has its own tests.
            "router": RouterSettings(
                group_id=f"router-{tag}", consumer_name=f"router-{tag}", http_port=0, poll_timeout_s=0.2,
                replay_window_s=0,
            ),
            "fanout": FanoutSettings(
                group_id=f"fanout-{tag}", consumer_name=f"test-{tag}", poll_timeout_s=0.2, replay_window_s=0
            ),
            "apdb": stack_settings.apdb.model_copy(update={"db_url": f"sqlite:///{tmp_path / 'apdb.sqlite3'}"}),
            "instruments": {
                "LSSTCam": InstrumentSettings(disabled_detectors="production"),
                "LATISS": InstrumentSettings(),
                "HSC": InstrumentSettings(),
            },
        }
    )
    # Created up front with one partition, so offsets are easy to check (Tansu would auto-create 4).
    ensure_topics(settings.kafka, list(topics.values()))
    return settings


_TOPIC_FIELDS = ("next_visit_topic", "dead_letter_topic", "raw_notifications_topic", "raw_dead_letter_topic",
                 "butler_writer_topic", "butler_dead_letter_topic", "alerts_topic")  # fmt: skip


@pytest.fixture
def redis_client(stack_settings: Settings) -> Iterator[redis.Redis]:
    client = admin_redis(stack_settings)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay of infra/overlays, rendered with `kubectl kustomize`: overlay name -> its objects."""
    from tests import manifests_check

    if not shutil.which("kubectl"):
        pytest.skip("kubectl not found: the overlays are rendered with `kubectl kustomize`")
    return {name: manifests_check.render(path) for name, path in manifests_check.overlays().items()}
