"""Every Redis client of the project, built one way from settings.

Whoever builds a client (a service, an activator, the CLI) gets the same behaviour: the ACL user
and password from ``RedisSettings``, a client name in ``CLIENT LIST`` (who is connected), a
command timeout, and redis-py's own ``Retry`` bounded by ``RetrySettings.redis_attempts`` with
jittered exponential backoff on connection errors and timeouts only. That retry covers a dropped
connection or a failover of a second or so; a longer outage reaches the caller, whose policy
(``adapters.retry``) decides. The password never appears in a log: it is passed as a parameter,
not in a URL.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from prompt_processing.settings import RedisSettings, RetrySettings


def make_redis(
    settings: RedisSettings, retry: RetrySettings, *, name: str, socket_timeout_s: float | None = None
) -> redis.Redis:
    """A client named ``pp-<name>``; ``socket_timeout_s`` (default ``settings.socket_timeout_s``) must
    outlast the longest BLOCK the caller uses."""
    timeout_s = settings.socket_timeout_s if socket_timeout_s is None else socket_timeout_s
    return redis.Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        socket_timeout=timeout_s,
        socket_connect_timeout=min(timeout_s, settings.socket_timeout_s),
        retry=Retry(
            ExponentialWithJitterBackoff(cap=retry.max_delay_s, base=retry.first_delay_s),
            retries=retry.redis_attempts - 1,
        ),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=10,
        client_name=f"pp-{name}"[:100].replace(" ", "-"),
    )
