"""Kafka clients built from settings, and topic creation.

confluent-kafka is untyped; this module is the one place that knows its config keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from prompt_processing.settings import KafkaSettings


def make_producer(kafka: KafkaSettings, *, linger_ms: int = 0) -> Producer:
    """An idempotent producer: a retried send is written once per partition; every message is confirmed
    or failed within ``delivery_timeout_s``."""
    return Producer(
        {
            **kafka.client_config(),
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "acks": "all",
            "message.timeout.ms": int(kafka.delivery_timeout_s * 1000),
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


@dataclass(frozen=True)
class Record:
    """A message as read: its value, key and headers (the last value of each header name)."""

    value: bytes
    key: bytes | None
    headers: dict[str, bytes]


def read_all(
    kafka: KafkaSettings, topic: str, *, since_utc: float | None = None, timeout_s: float = 10.0, quiet_s: float = 1.0
) -> list[bytes]:
    """The values of ``read_records``."""
    return [r.value for r in read_records(kafka, topic, since_utc=since_utc, timeout_s=timeout_s, quiet_s=quiet_s)]


def read_records(
    kafka: KafkaSettings, topic: str, *, since_utc: float | None = None, timeout_s: float = 10.0, quiet_s: float = 1.0
) -> list[Record]:
    """Every message now on ``topic`` (or written since ``since_utc``), to the end of each partition.

    The end is where the partitions' high watermarks say, and then on until no message came for
    ``quiet_s``: a broker may report a watermark short of the last message (Tansu answers the
    base offset of the last batch + 1: 56 for 60 messages sent five to a batch), and trusting it
    would drop the tail. Uses partition assignment, not a consumer group: no join wait, no
    committed offsets. TimeoutError if nothing comes for ``timeout_s`` before the watermarks.
    """
    consumer = Consumer({**kafka.client_config(), "group.id": "pp-read-all", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        behind = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                behind[p] = high
        starts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in behind]
        if since_utc is not None and starts:
            wanted = [TopicPartition(topic, p, int(since_utc * 1000)) for p in behind]
            starts = [s for s in consumer.offsets_for_times(wanted, timeout=timeout_s) if s.offset >= 0]
            behind = {s.partition: behind[s.partition] for s in starts}  # none written since: nothing to read
        consumer.assign(starts)
        records: list[Record] = []
        while True:
            message = consumer.poll(timeout_s if behind else quiet_s)
            if message is None:
                if behind:
                    raise TimeoutError(f"{topic}: no message within {timeout_s} s before the end offsets")
                return records
            if message.error() is not None:
                continue
            headers = {str(h[0]): _bytes(h[1]) for h in message.headers() or []}
            records.append(Record(message.value() or b"", message.key(), headers))
            if (message.offset() or 0) + 1 >= behind.get(message.partition() or 0, 0):
                behind.pop(message.partition() or 0, None)
    finally:
        consumer.close()


def _bytes(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""
