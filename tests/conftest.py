"""Fixtures: one real embedded Redis and Kafka-protocol broker per test session.

Both run on free loopback ports with state in a temporary directory, so tests never touch
the machine's own Redis (6379) or a developer's `pp stack`. Each test gets a clean Redis
database and its own Kafka topics and consumer group.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from prompt_processing.kafka import ensure_topics
from prompt_processing.settings import (
    FanoutSettings,
    InstrumentSettings,
    KafkaSettings,
    RedisSettings,
    Settings,
    StackSettings,
)
from prompt_processing.stack import Stack

for _name in [n for n in os.environ if n.startswith("PP_")]:
    del os.environ[_name]  # a developer's PP_* must not leak into the tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    state_dir: Path = tmp_path_factory.mktemp("pp-stack")
    settings = Settings(
        redis=RedisSettings(port=free_port()),
        kafka=KafkaSettings(port=free_port()),
        stack=StackSettings(state_dir=state_dir),
    )
    stack = Stack(settings)
    try:
        stack.up(["redis", "kafka"])
        yield settings
    finally:
        stack.down(["redis", "kafka"])


@pytest.fixture
def settings(stack_settings: Settings, redis_client: redis.Redis) -> Settings:
    """Settings with this test's own topics and group; LSSTCam uses production's disabled list."""
    tag = uuid.uuid4().hex[:8]
    settings = stack_settings.model_copy(
        update={
            "kafka": stack_settings.kafka.model_copy(
                update={"next_visit_topic": f"next-visit-{tag}", "dead_letter_topic": f"dead-letter-{tag}"}
            ),
            "fanout": FanoutSettings(group_id=f"fanout-{tag}", consumer_name=f"test-{tag}", poll_timeout_s=0.2),
            "instruments": {
                "LSSTCam": InstrumentSettings(disabled_detectors="production"),
                "LATISS": InstrumentSettings(),
                "HSC": InstrumentSettings(),
            },
        }
    )
    # Created up front with one partition, so offsets are easy to check (Tansu would auto-create 4).
    ensure_topics(settings.kafka, [settings.kafka.next_visit_topic, settings.kafka.dead_letter_topic])
    return settings


@pytest.fixture
def redis_client(stack_settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack_settings.redis.url)
    client.flushdb()
    yield client
    client.close()
