"""Kafka clients built from settings, and topic creation.

confluent-kafka is untyped; this module is the one place that knows its config keys.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from prompt_processing.settings import KafkaSettings


def make_producer(kafka: KafkaSettings, *, linger_ms: int = 0) -> Producer:
    """An idempotent producer: a retried send is written once per partition."""
    return Producer(
        {
            **kafka.client_config(),
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "acks": "all",
        }
    )


def make_consumer(kafka: KafkaSettings, group_id: str, *, client_id: str) -> Consumer:
    """A consumer that never commits on its own: callers commit after their work is durable."""
    return Consumer(
        {
            **kafka.client_config(),
            "group.id": group_id,
            "client.id": client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": kafka.session_timeout_ms,
            "heartbeat.interval.ms": max(kafka.session_timeout_ms // 6, 100),
            "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
        }
    )


def ensure_topics(kafka: KafkaSettings, topics: Iterable[str], *, timeout_s: float = 10.0) -> list[str]:
    """Create the topics that do not exist yet; return the ones created. Idempotent."""
    admin = AdminClient(kafka.client_config())
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [t for t in dict.fromkeys(topics) if t not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=kafka.topic_partitions, replication_factor=1) for t in wanted],
        operation_timeout=timeout_s,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created
