"""The failure classes of ``model.failures`` (pure: errors built as the clients build them) and the
outage watch of ``adapters.retry``."""

from __future__ import annotations

import logging

import botocore.exceptions
import httpx
import pytest
import redis.exceptions
import sqlalchemy.exc
from confluent_kafka import KafkaError, KafkaException
from redis._parsers.base import BaseParser

from prompt_processing.adapters.retry import OutageWatch
from prompt_processing.model.errors import NonRetriableError, RetriableError
from prompt_processing.model.failures import Failure, classify, is_transient, redis_code, transient_as_retriable


def redis_reply(text: str) -> redis.exceptions.RedisError:
    """The exception redis-py raises for the error reply ``text``."""
    error: redis.exceptions.RedisError = BaseParser.parse_error(text)
    return error


def s3_error(code: str, status: int) -> botocore.exceptions.ClientError:
    response = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(response, "GetObject")  # type: ignore[arg-type]


def http_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://prefect/api/deployments/x/create_flow_run")
    return httpx.HTTPStatusError("s", request=request, response=httpx.Response(status, request=request))


@pytest.mark.parametrize(("error", "expected"), [
    (redis.exceptions.ConnectionError("Connection refused"), Failure.TRANSIENT),
    (redis.exceptions.TimeoutError("Timeout reading"), Failure.TRANSIENT),
    (redis_reply("LOADING Redis is loading the dataset in memory"), Failure.TRANSIENT),
    (redis_reply("BUSY Redis is busy running a script"), Failure.TRANSIENT),
    (redis_reply("READONLY You can't write against a read only replica."), Failure.TRANSIENT),
    (redis_reply("TRYAGAIN Multiple keys request during rehashing of slot"), Failure.TRANSIENT),
    (redis_reply("OOM command not allowed when used memory > 'maxmemory'."), Failure.TRANSIENT),
    (redis_reply("WRONGTYPE Operation against a key holding the wrong kind of value"), Failure.PERMANENT),
    (redis_reply("NOGROUP No such key 'x' or consumer group 'y'"), Failure.PERMANENT),
    (redis_reply("WRONGPASS invalid username-password pair or user is disabled."), Failure.CONFIGURATION),
    (redis_reply("NOPERM User pp has no permissions to run the 'flushall' command"), Failure.CONFIGURATION),
    (KafkaException(KafkaError(KafkaError._TRANSPORT)), Failure.TRANSIENT),
    (KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT)), Failure.TRANSIENT),
    (KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT)), Failure.TRANSIENT),
    (KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)), Failure.PERMANENT),
    (KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), Failure.CONFIGURATION),
    (s3_error("SlowDown", 503), Failure.TRANSIENT),
    (s3_error("InternalError", 500), Failure.TRANSIENT),
    (s3_error("Whatever", 502), Failure.TRANSIENT),
    (s3_error("TooManyRequests", 429), Failure.TRANSIENT),
    (s3_error("NoSuchKey", 404), Failure.PERMANENT),
    (s3_error("AccessDenied", 403), Failure.CONFIGURATION),
    (s3_error("InvalidArgument", 400), Failure.PERMANENT),
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3"), Failure.TRANSIENT),
    (botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3"), Failure.TRANSIENT),
    (botocore.exceptions.NoCredentialsError(), Failure.CONFIGURATION),
    (botocore.exceptions.ParamValidationError(report="bad"), Failure.PERMANENT),
    (sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")), Failure.TRANSIENT),
    (sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")), Failure.PERMANENT),
    (httpx.ConnectError("refused"), Failure.TRANSIENT),
    (httpx.ReadTimeout("slow"), Failure.TRANSIENT),
    (http_error(503), Failure.TRANSIENT),
    (http_error(429), Failure.TRANSIENT),
    (http_error(404), Failure.PERMANENT),
    (http_error(422), Failure.PERMANENT),
    (http_error(401), Failure.CONFIGURATION),
    (ConnectionResetError("reset by peer"), Failure.TRANSIENT),
    (TimeoutError("timed out"), Failure.TRANSIENT),
    (FileNotFoundError("no such file"), Failure.PERMANENT),
    (PermissionError("denied"), Failure.PERMANENT),
    (ValueError("a bug"), Failure.PERMANENT),
    (RetriableError("ours"), Failure.TRANSIENT),
    (NonRetriableError("ours"), Failure.PERMANENT),
])  # fmt: skip
def test_each_boundary_error_is_classed_by_type_and_code(error: BaseException, expected: Failure) -> None:
    assert classify(error) is expected
    assert is_transient(error) is (expected is Failure.TRANSIENT)


def test_a_wrapped_error_is_classed_by_its_cause() -> None:
    try:
        try:
            raise redis.exceptions.ConnectionError("down")
        except redis.exceptions.ConnectionError as exc:
            raise RuntimeError("while doing x") from exc
    except RuntimeError as wrapped:
        assert classify(wrapped) is Failure.TRANSIENT


def test_the_code_of_a_redis_reply_is_its_first_word_or_the_type_redis_py_gave_it() -> None:
    assert redis_code(redis_reply("BUSYGROUP Consumer Group name already exists")) == "BUSYGROUP"
    assert redis_code(redis_reply("READONLY You can't write against a read only replica.")) == "READONLY"
    assert redis_code(redis_reply("unknown command 'FOO'")) == ""
    assert redis_code(ValueError("BUSYGROUP")) == ""


def test_inside_a_step_only_transient_failures_become_retriable() -> None:
    butler = transient_as_retriable("central Butler")
    with pytest.raises(RetriableError, match="central Butler: OperationalError"), butler:
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("gone"))
    with pytest.raises(sqlalchemy.exc.IntegrityError), transient_as_retriable("central Butler"):
        raise sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate"))
    with pytest.raises(NonRetriableError), transient_as_retriable("central Butler"):
        raise NonRetriableError("ours pass unchanged")


def test_an_outage_alarms_once_after_the_limit_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    watch = OutageWatch(alarm_after_s=0.0)
    caplog.set_level(logging.WARNING)
    assert watch.healthy
    watch.failed("redis", redis.exceptions.ConnectionError("down"))
    watch.failed("redis", redis.exceptions.ConnectionError("still down"))
    assert not watch.healthy
    snapshot = watch.snapshot()
    assert snapshot["healthy"] is False and snapshot["outages"]["redis"]["error"] == "ConnectionError: still down"
    assert sum("OUTAGE: redis" in r.getMessage() for r in caplog.records) == 1
    watch.recovered("redis")
    assert watch.healthy and watch.snapshot() == {"healthy": True, "outages": {}}
    assert any("RECOVERED: redis" in r.getMessage() for r in caplog.records)


def test_a_short_failure_is_no_outage_but_a_refused_configuration_is_one_at_once() -> None:
    watch = OutageWatch(alarm_after_s=60.0)
    watch.failed("s3", s3_error("SlowDown", 503))
    assert watch.healthy
    watch.failed("kafka", KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    assert not watch.healthy and set(watch.snapshot()["outages"]) == {"kafka"}
