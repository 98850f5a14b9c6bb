"""Every Redis key, stream, consumer-group and Kafka header name, in one place.

Production compatibility: streams are ``instrument:<name lower-case>`` and groups
``<name lower-case>_consumer_group``, as in Rubin's deployment.
"""

from __future__ import annotations

KEY_PREFIX = "pp"

# Kafka headers on dead-lettered messages (values are UTF-8 bytes).
DLQ_HEADER_REASON = "pp-dead-letter-reason"
DLQ_HEADER_KIND = "pp-dead-letter-kind"
DLQ_HEADER_SOURCE = "pp-source"  # "<topic>/<partition>/<offset>"


def stream_name(instrument: str) -> str:
    """The Redis stream holding one entry per (visit, active detector)."""
    return f"instrument:{instrument.lower()}"


def consumer_group(instrument: str) -> str:
    """The consumer group the activator workers read the stream through."""
    return f"{instrument.lower()}_consumer_group"


def fanout_seen_key(instrument: str, group_id: str) -> str:
    """Set (with a TTL) once a visit has been fanned out; the de-duplication key."""
    return f"{KEY_PREFIX}:fanout:seen:{instrument.lower()}:{group_id}"


def fanout_health_key(consumer_name: str) -> str:
    """JSON health and counters of one fan-out process, refreshed with a TTL."""
    return f"{KEY_PREFIX}:fanout:health:{consumer_name}"
