"""What a failure at a boundary means: worth another try, wrong configuration, or final.

Every error a service or a visit's step catches from Redis, Kafka, S3, a database (the Butler
registry, the APDB) or the Prefect API is classed here, by exception type and by the code the
server answered with (an HTTP status, an S3 error code, a Kafka error code, a Redis error reply's
code word), never by reading a message:

* ``TRANSIENT``: the other side is unreachable, slow or busy (connection refused or reset,
  timeouts, Redis ``LOADING``/``BUSY``/``READONLY``/``TRYAGAIN``/``MASTERDOWN``/``OOM``/``MISCONF``,
  HTTP 5xx and 429,
  S3 throttling, Kafka errors the client marks retriable). Retry with backoff.
* ``CONFIGURATION``: the other side refuses *us* (bad credentials, no permission, no such
  bucket). Not retried, like a permanent failure (a bad credential must not stall a partition
  forever: the message is dead-lettered, to be replayed once fixed), but a service that meets
  one reports itself unhealthy at once, until the same call succeeds again.
* ``PERMANENT``: everything else (a Redis ``WRONGTYPE``, an S3 ``NoSuchKey``, an HTTP 404, a
  message too large): another try gives the same answer. The message goes to its dead-letter
  destination with the reason.

Our own ``RetriableError`` and ``NonRetriableError`` (``model.errors``) keep their meaning; an
error raised from another (``raise ... from exc``) is classed by what it wraps when it is not one
of ours.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum

import botocore.exceptions
import httpx
import redis.exceptions
import sqlalchemy.exc
from confluent_kafka import KafkaError, KafkaException

from prompt_processing.model.errors import NonRetriableError, RetriableError, VisitError


class Failure(StrEnum):
    TRANSIENT = "transient"
    CONFIGURATION = "configuration"
    PERMANENT = "permanent"


REDIS_TRANSIENT_CODES = frozenset({
    "LOADING", "BUSY", "READONLY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN",
    "OOM",  # at maxmemory: consumers catching up (or an operator) free it; visits wait, not dead-lettered
    "MISCONF",  # cannot persist (disk full): refused before any write, fixed by an operator
})  # fmt: skip
REDIS_CONFIGURATION_CODES = frozenset({"NOAUTH", "WRONGPASS", "NOPERM"})
S3_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequestsException",
})  # fmt: skip
S3_CONFIGURATION_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "ExpiredToken",
    "InvalidToken", "AllAccessDisabled",
})  # fmt: skip
KAFKA_CONFIGURATION_CODES = frozenset({
    KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION, KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, KafkaError._SSL, KafkaError.UNKNOWN_TOPIC_OR_PART,
})  # fmt: skip
KAFKA_TRANSIENT_CODES = frozenset({
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.NETWORK_EXCEPTION, KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR, KafkaError._WAIT_COORD, KafkaError._QUEUE_FULL, KafkaError.THROTTLING_QUOTA_EXCEEDED,
})  # fmt: skip
TRANSIENT_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH,
    errno.ENETUNREACH, errno.ENETDOWN, errno.EAGAIN,
})  # fmt: skip


def classify(exc: BaseException) -> Failure:
    """What ``exc`` means for the caller (see the module docstring)."""
    if isinstance(exc, RetriableError):
        return Failure.TRANSIENT
    if isinstance(exc, NonRetriableError):
        return Failure.PERMANENT
    for kind, classifier in _CLASSIFIERS:
        if isinstance(exc, kind):
            return classifier(exc)
    if exc.__cause__ is not None and exc.__cause__ is not exc:
        return classify(exc.__cause__)
    return Failure.PERMANENT


def is_transient(exc: BaseException) -> bool:
    """Worth another try of the same call: the other side is unreachable, slow or busy."""
    return classify(exc) is Failure.TRANSIENT


@contextmanager
def transient_as_retriable(what: str) -> Iterator[None]:
    """Inside a visit's step: a transient failure becomes ``RetriableError("<what>: <type>: <error>")``
    (Prefect retries the step, then the entry is handed back); our own errors and permanent ones pass."""
    try:
        yield
    except VisitError:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise RetriableError(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise


def redis_code(exc: BaseException) -> str:
    """The code word of a Redis error reply (``BUSYGROUP``, ``NOGROUP``, ``WRONGTYPE``, ...), or "".

    redis-py turns the codes it knows into types (``ReadOnlyError`` ...) and keeps the code in
    ``status_code``; any other reply is a ``ResponseError`` whose text starts with its code.
    """
    if not isinstance(exc, redis.exceptions.ResponseError):
        return ""
    status = getattr(exc, "status_code", None)
    if status:
        return str(status)
    text = str(exc.args[0]) if exc.args else ""
    word = text.split(" ", 1)[0]
    return word if word.isupper() and word.replace("_", "").isalpha() else ""


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The ``KafkaError`` a ``KafkaException`` carries, if any."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def classify_kafka_error(error: KafkaError) -> Failure:
    """A ``KafkaError`` (from an exception or a delivery report)."""
    code = error.code()
    if code in KAFKA_CONFIGURATION_CODES:
        return Failure.CONFIGURATION
    if code in KAFKA_TRANSIENT_CODES or error.retriable():
        return Failure.TRANSIENT
    return Failure.PERMANENT


def http_status_failure(status: int) -> Failure:
    """An HTTP answer's status: 5xx, 429 and 408 transient; 401 and 403 configuration; else permanent."""
    if status >= 500 or status in (408, 429):
        return Failure.TRANSIENT
    if status in (401, 403):
        return Failure.CONFIGURATION
    return Failure.PERMANENT


def _redis(exc: BaseException) -> Failure:
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
        return Failure.CONFIGURATION
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return Failure.TRANSIENT  # BusyLoadingError (LOADING) is a ConnectionError
    code = redis_code(exc)
    if code in REDIS_TRANSIENT_CODES:
        return Failure.TRANSIENT
    if code in REDIS_CONFIGURATION_CODES:
        return Failure.CONFIGURATION
    return Failure.PERMANENT


def _kafka(exc: BaseException) -> Failure:
    error = kafka_error(exc)
    return Failure.PERMANENT if error is None else classify_kafka_error(error)


def _s3_client(exc: BaseException) -> Failure:
    assert isinstance(exc, botocore.exceptions.ClientError)
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code in S3_TRANSIENT_CODES:
        return Failure.TRANSIENT
    if code in S3_CONFIGURATION_CODES:
        return Failure.CONFIGURATION
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return http_status_failure(int(status)) if status else Failure.PERMANENT


def _botocore(exc: BaseException) -> Failure:
    transient = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)
    if isinstance(exc, transient):  # connect/read timeouts, endpoint unreachable, connection closed
        return Failure.TRANSIENT
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return Failure.CONFIGURATION
    return Failure.PERMANENT


def _database(exc: BaseException) -> Failure:
    outage = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.DisconnectionError,
              sqlalchemy.exc.TimeoutError)  # fmt: skip
    if isinstance(exc, outage):
        return Failure.TRANSIENT
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return Failure.TRANSIENT
    return Failure.PERMANENT


def _http(exc: BaseException) -> Failure:
    if isinstance(exc, httpx.HTTPStatusError):
        return http_status_failure(exc.response.status_code)
    if isinstance(exc, httpx.TransportError):  # connect, read, write and pool timeouts, refused, reset
        return Failure.TRANSIENT
    return Failure.PERMANENT


def _os(exc: BaseException) -> Failure:
    assert isinstance(exc, OSError)
    if isinstance(exc, ConnectionError | TimeoutError) or exc.errno in TRANSIENT_ERRNOS:
        return Failure.TRANSIENT
    if exc.__cause__ is not None:
        return classify(exc.__cause__)
    return Failure.PERMANENT


_CLASSIFIERS: tuple[tuple[type[BaseException], Callable[[BaseException], Failure]], ...] = (
    (redis.exceptions.RedisError, _redis),
    (KafkaException, _kafka),
    (botocore.exceptions.ClientError, _s3_client),
    (botocore.exceptions.BotoCoreError, _botocore),
    (sqlalchemy.exc.SQLAlchemyError, _database),
    (httpx.HTTPError, _http),
    (OSError, _os),
)
