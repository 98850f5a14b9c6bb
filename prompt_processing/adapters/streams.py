"""Writing one visit's work entries to its instrument stream, atomically and once.

Guarantee: for a given (instrument, groupId), at most one ``write`` ever adds entries
while the de-duplication key lives (``dedup_ttl_s``), and when it does it adds one
entry per detector in a single MULTI/EXEC together with the key — all or nothing.
A concurrent writer of the same visit (say, a second fan-out after a Kafka rebalance)
loses the WATCH race and reports a duplicate. The consumer group is (re)created in
the same transaction at ``$`` when missing, so a stream or group lost under a running
fan-out is restored and the new entries are delivered, old ones are not replayed.

Speed: the commands are packed into one RESP buffer (the event's fields are encoded
once and shared by all detectors) and sent over a ``RespConnection``, two round trips
per visit; see BENCHMARKS.md. Not for Redis Cluster (the stream and the key would live
in different slots).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from prompt_processing.adapters.resp import RespConnection, bulk, command
from prompt_processing.model import naming
from prompt_processing.model.events import NextVisit


class StreamFanOut:
    """Adds a visit's per-detector entries to ``instrument:<name>`` exactly once."""

    def __init__(self, connection: RespConnection, *, dedup_ttl_s: int, stream_maxlen: int) -> None:
        self._connection = connection
        self._ttl = str(dedup_ttl_s).encode()
        self._maxlen = str(stream_maxlen).encode()

    def write(self, visit: NextVisit, instrument: str, detectors: Sequence[int]) -> int:
        """Add one entry per detector; return how many were added (0 = already fanned out).

        Raises redis.RedisError when Redis fails; then nothing or everything was written,
        and calling again is safe.
        """
        seen = naming.visit_key(instrument, visit.groupId).encode()
        _, exists = self._connection.call(command(b"WATCH", seen) + command(b"EXISTS", seen), 2)
        if isinstance(exists, redis.ResponseError):
            raise exists
        if exists:
            self._connection.call(command(b"UNWATCH"), 1)
            return 0
        # MULTI, XGROUP, SET, one XADD per detector, EXEC: all replies but EXEC's are OK/QUEUED.
        replies = self._connection.call(self._transaction(visit, instrument, seen, detectors), len(detectors) + 4)
        results = replies[-1]
        if results is None:  # WATCH fired: another writer fanned this visit out first
            return 0
        _raise_unexpected(results)
        return len(detectors)

    def _transaction(self, visit: NextVisit, instrument: str, seen: bytes, detectors: Sequence[int]) -> bytes:
        stream = naming.stream_name(instrument).encode()
        group = naming.consumer_group(instrument).encode()
        fields = visit.stream_fields()
        shared = b"".join(bulk(k.encode()) + bulk(v.encode()) for k, v in fields.items())
        n_args = 6 + 2 * len(fields) + 2
        head = (
            b"*%d\r\n" % n_args
            + bulk(b"XADD") + bulk(stream) + bulk(b"MAXLEN") + bulk(b"~") + bulk(self._maxlen)
            + bulk(b"*") + shared + bulk(b"detector")
        )  # fmt: skip
        parts = [
            command(b"MULTI"),
            command(b"XGROUP", b"CREATE", stream, group, b"$", b"MKSTREAM"),
            command(b"SET", seen, visit.model_dump_json().encode(), b"EX", self._ttl),
        ]
        parts.extend(head + bulk(str(d).encode()) for d in detectors)
        parts.append(command(b"EXEC"))
        return b"".join(parts)


def _raise_unexpected(results: object) -> None:
    """EXEC ran; only the group creation may fail, and only because the group exists."""
    if isinstance(results, redis.ResponseError):  # EXECABORT: a command was refused while queued
        raise results
    assert isinstance(results, list)
    for result in results:
        if isinstance(result, redis.ResponseError) and not str(result).startswith("BUSYGROUP"):
            raise result
