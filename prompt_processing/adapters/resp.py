"""A minimal pipelined Redis connection for the fan-out's hot path.

One buffer out, N replies back, parsed by hiredis in one pass. redis-py costs a few
microseconds of Python per reply; a 189-detector MULTI/EXEC has 193 replies, which made
that overhead a third of the fan-out's latency (see BENCHMARKS.md). Everything else
uses redis-py.

Guarantee: a connection whose exchange failed part-way is closed, never reused (its
replies would be out of step, and a WATCH on it would still be armed); the next call
opens a fresh one.
"""

from __future__ import annotations

import socket

import hiredis
import redis

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
