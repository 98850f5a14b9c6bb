"""Today's client, kept as the fan-out benchmark's baseline: the writer the fan-out used before
issue 13 (a hand-written RESP connection, two round trips per visit).

``bench.bench_fanout`` measures it in the same run as the server-side script that replaced it
(``prompt_processing.adapters.streams.StreamFanOut``) and redis-py's pipeline. Not used by the
runtime package.

``RespConnection``: one buffer out, N replies back, parsed by hiredis in one pass (redis-py cost a
few microseconds of Python per reply; a 189-detector MULTI/EXEC has 193 replies). A connection
whose exchange failed part-way is closed, never reused (its replies would be out of step, and a
WATCH on it would still be armed). No TLS, no client name.

``PackedMultiExecFanOut``: WATCH + EXISTS on the de-duplication key, then MULTI, XGROUP CREATE,
SET, one XADD per detector, EXEC, all packed into one RESP buffer (the event's fields encoded
once and shared by all detectors). A concurrent writer of the same visit loses the WATCH race.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import hiredis
import redis

from prompt_processing.model import naming
from prompt_processing.model.events import NextVisit
from prompt_processing.settings import RedisSettings

_READ_CHUNK_BYTES = 65536


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    """One RESP command (an array of bulk strings)."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


class RespConnection:
    """A single Redis connection that sends pre-packed commands and reads their replies.

    Error replies come back as ``redis.ResponseError`` instances in the result list (not
    raised), so a caller can tell which command of a batch failed. Transport failures
    raise ``redis.ConnectionError`` or ``redis.TimeoutError``.
    """

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._sock: socket.socket | None = None
        self._reader = _new_reader()

    def call(self, payload: bytes, n_replies: int) -> list[object]:
        """Send ``payload`` (``n_replies`` commands) and return their replies in order."""
        try:
            sock = self._sock or self._connect()
            sock.sendall(payload)
            return self._read(sock, n_replies)
        except TimeoutError as exc:
            self.close()
            raise redis.TimeoutError(f"Redis did not answer within {self._settings.socket_timeout_s} s") from exc
        except OSError as exc:
            self.close()
            raise redis.ConnectionError(f"Redis at {self._settings.host}:{self._settings.port}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._reader = _new_reader()

    def _read(self, sock: socket.socket, n_replies: int) -> list[object]:
        replies: list[object] = []
        while len(replies) < n_replies:
            reply = self._reader.gets()
            if reply is False:
                data = sock.recv(_READ_CHUNK_BYTES)
                if not data:
                    raise ConnectionResetError("connection closed by Redis")
                self._reader.feed(data)
                continue
            replies.append(reply)
        return replies

    def _connect(self) -> socket.socket:
        s = self._settings
        sock = socket.create_connection((s.host, s.port), timeout=s.socket_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._reader = _new_reader()
        setup = []
        if s.password is not None:
            user = [s.username.encode()] if s.username else []
            setup.append(command(b"AUTH", *user, s.password.get_secret_value().encode()))
        setup.append(command(b"SELECT", str(s.db).encode()))
        sock.sendall(b"".join(setup))
        for reply in self._read(sock, len(setup)):
            if isinstance(reply, redis.ResponseError):
                raise redis.ConnectionError(f"Redis refused the connection set-up: {reply}")
        return sock


def _new_reader() -> hiredis.Reader:
    """A RESP parser that returns error replies as redis-py's ``ResponseError`` (not raised)."""
    return hiredis.Reader(replyError=redis.ResponseError)


class PackedMultiExecFanOut:
    """The old ``StreamFanOut``: adds a visit's per-detector entries once, in two round trips."""

    def __init__(self, connection: RespConnection, *, dedup_ttl_s: int, stream_maxlen: int) -> None:
        self._connection = connection
        self._ttl = str(dedup_ttl_s).encode()
        self._maxlen = str(stream_maxlen).encode()

    def write(self, visit: NextVisit, instrument: str, detectors: Sequence[int]) -> int:
        """Add one entry per detector; return how many were added (0 = already fanned out)."""
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
