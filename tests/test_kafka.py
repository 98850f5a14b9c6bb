"""The Kafka adapter against the real Kafka-protocol broker."""

from __future__ import annotations

import json

from prompt_processing.adapters import kafka
from prompt_processing.settings import Settings
from tests.helpers import consume_all


def test_read_all_reads_to_the_real_end_not_the_reported_watermark(settings: Settings) -> None:
    """Tansu reports a partition's high watermark as the last batch's base offset + 1: here 56 for
    60 messages. read_all must still return all of them, like an independent consumer does."""
    topic = settings.kafka.alerts_topic
    for batch in range(12):  # one producer per batch, as twelve activators would
        producer = kafka.make_producer(settings.kafka)
        for i in range(5):
            producer.produce(topic, json.dumps({"i": batch * 5 + i}).encode())
        assert producer.flush(10) == 0
    read = sorted(json.loads(value)["i"] for value in kafka.read_all(settings.kafka, topic))
    independent = sorted(json.loads(m.value())["i"] for m in consume_all(settings, topic, 60))
    assert read == independent == list(range(60))
