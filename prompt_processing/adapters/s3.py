"""S3 access built from settings; third-party errors become our retriable/non-retriable ones."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from prompt_processing.model.errors import NonRetriableError, RetriableError
from prompt_processing.model.failures import is_transient
from prompt_processing.settings import S3Settings


class ObjectMissing(NonRetriableError):
    """The object does not exist (a missing calibration, template or raw)."""


def make_client(s3: S3Settings, *, read_timeout_s: float = 30.0, attempts: int = 3) -> Any:
    """A boto3 S3 client for the configured endpoint (path-style, bounded retries and timeouts)."""
    return boto3.client(
        "s3",
        endpoint_url=s3.url,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key.get_secret_value(),
        region_name=s3.region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=min(5.0, read_timeout_s),
            read_timeout=read_timeout_s,
        ),
    )


def ensure_buckets(client: Any, buckets: list[str]) -> list[str]:
    """Create the buckets that do not exist; return the ones created. Idempotent."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    created = []
    for bucket in dict.fromkeys(buckets):
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
            created.append(bucket)
    return created


def get_bytes(client: Any, bucket: str, key: str, first_bytes: int | None = None) -> bytes:
    """The object's content (only its first ``first_bytes``, with a ranged GET, if given); ObjectMissing if
    absent, RetriableError if S3 is unreachable or failing (``model.failures``), NonRetriableError if it
    refuses (access denied, a bad request)."""
    ranged = {} if first_bytes is None else {"Range": f"bytes=0-{first_bytes - 1}"}
    try:
        body: bytes = client.get_object(Bucket=bucket, Key=key, **ranged)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404"):
            raise ObjectMissing(f"s3://{bucket}/{key} does not exist") from exc
        if is_transient(exc):
            raise RetriableError(f"S3 GET s3://{bucket}/{key} failed: {code or exc}") from exc
        raise NonRetriableError(f"S3 GET s3://{bucket}/{key} refused: {code or exc}") from exc
    except BotoCoreError as exc:
        if is_transient(exc):
            raise RetriableError(f"S3 GET s3://{bucket}/{key} failed: {exc}") from exc
        raise NonRetriableError(f"S3 GET s3://{bucket}/{key} refused: {exc}") from exc
    return body


def put_bytes(client: Any, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    """Write one object; RetriableError if S3 is unreachable or failing."""
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
    except (ClientError, BotoCoreError) as exc:
        if is_transient(exc):
            raise RetriableError(f"S3 PUT s3://{bucket}/{key} failed: {exc}") from exc
        raise NonRetriableError(f"S3 PUT s3://{bucket}/{key} refused: {exc}") from exc
