"""The autoscaler's ScaledJob-like spec file (``deployments/autoscaler.yaml``), validated.

One entry per instrument, named as in a KEDA ``ScaledJob`` so a production manifest reads
across::

    scaledJobs:
      - instrument: LSSTCam
        deployment: activator/activator-lsstcam   # <flow name>/<deployment name>
        pollingInterval: 1                        # s; also woken at once by new entries
        minReplicaCount: 3
        maxReplicaCount: 1700
        scalingStrategy: eager                    # default | custom | accurate | eager
        triggers:
          - type: redis-streams
            metadata:
              stream: instrument:lsstcam          # default: naming.stream_name(instrument)
              consumerGroup: lsstcam_consumer_group
              lagCount: "1"                       # exactly one of lagCount / pendingEntriesCount / streamLength
              activationLagCount: "0"

Differences from KEDA, on purpose: exactly one target metric must be named (KEDA silently
defaults to ``pendingEntriesCount: 5``); ``custom`` needs ``customScalingRunningJobPercentage``
(KEDA silently falls back to ``default``); ``minReplicaCount`` may not exceed
``maxReplicaCount``; the Redis connection comes from ``PP_REDIS__*``, not trigger metadata.
Errors name the field: ``scaledJobs[0] (LSSTCam).triggers[0].metadata.lagCount: ...``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prompt_processing.model import naming

Metric = Literal["lagCount", "pendingEntriesCount", "streamLength"]
_METRICS: tuple[Metric, ...] = ("lagCount", "pendingEntriesCount", "streamLength")
_KEDA_CONNECTION_KEYS = (
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "username", "usernameFromEnv",
    "password", "passwordFromEnv", "databaseIndex", "enableTLS", "unsafeSsl",
)  # fmt: skip


MAX_VALUE_NODES = 10_000
"""The most items (texts, numbers, lists, mappings) one field of a spec may hold, nested and expanded."""


class SpecError(ValueError):
    """The spec file is missing, not YAML, or invalid; the message names the file and field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("*")
    @classmethod
    def _utf8(cls, value: Any) -> Any:
        """Names and parameters go to Redis and the Prefect API: every text in them (nested too) must encode as
        UTF-8, which a lone surrogate (a YAML ``"\\udc80"`` escape) does not; and a value may hold at most
        ``MAX_VALUE_NODES`` items once expanded (YAML aliases can nest a value that expands exponentially, and
        the parameters are sent expanded)."""
        pending, seen = [value], 0
        while pending:  # a loop, not recursion: nesting as deep as YAML allows
            item = pending.pop()
            seen += 1
            if seen > MAX_VALUE_NODES:
                raise ValueError(f"more than {MAX_VALUE_NODES} items once YAML aliases are expanded")
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(f"{item[:40]!r} is not UTF-8 text (a lone surrogate)") from None
            elif isinstance(item, dict):
                pending.extend((*item.keys(), *item.values()))
            elif isinstance(item, list | tuple):
                pending.extend(item)
        return value


class RedisStreamsMetadata(_Model):
    """KEDA's ``redis-streams`` trigger metadata (numbers may be strings, as in KEDA)."""

    stream: str | None = Field(None, min_length=1, description="Default: instrument:<name lower-case>.")
    consumer_group: str | None = Field(None, alias="consumerGroup", min_length=1,
                                       description="Default: <name lower-case>_consumer_group.")  # fmt: skip
    lag_count: int | None = Field(None, alias="lagCount", ge=1, description="Target lag per run (XINFO GROUPS).")
    pending_entries_count: int | None = Field(None, alias="pendingEntriesCount", ge=1,
                                              description="Target pending entries per run (XPENDING).")  # fmt: skip
    stream_length: int | None = Field(None, alias="streamLength", ge=1, description="Target XLEN per run.")
    activation_lag_count: int = Field(0, alias="activationLagCount", ge=0,
                                      description="Active only while the lag exceeds it (lagCount only).")  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _no_connection_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [k for k in _KEDA_CONNECTION_KEYS if k in data]
            if given:
                raise ValueError(f"{', '.join(given)}: the Redis connection comes from PP_REDIS__*; remove it here")
        return data

    @model_validator(mode="after")
    def _one_target(self) -> RedisStreamsMetadata:
        named = [m for m in _METRICS if self.target_of(m) is not None]
        if len(named) != 1:
            got = ", ".join(named) or "none"
            raise ValueError(f"name exactly one target of lagCount, pendingEntriesCount, streamLength (got {got})")
        if self.activation_lag_count and named[0] != "lagCount":
            raise ValueError("activationLagCount applies to lagCount only")
        return self

    def target_of(self, metric: Metric) -> int | None:
        return {"lagCount": self.lag_count, "pendingEntriesCount": self.pending_entries_count,
                "streamLength": self.stream_length}[metric]  # fmt: skip


class Trigger(_Model):
    type: Literal["redis-streams"]
    name: str | None = None
    metadata: RedisStreamsMetadata


class ScaledJobSpec(_Model):
    """One instrument's scaling: which deployment to run, how many, on which stream metric."""

    instrument: str = Field(min_length=1)
    deployment: str = Field(description="<flow name>/<deployment name>, e.g. activator/activator-lsstcam.")
    polling_interval_s: float = Field(1.0, alias="pollingInterval", gt=0, le=3600)
    min_replica_count: int = Field(0, alias="minReplicaCount", ge=0)
    max_replica_count: int = Field(100, alias="maxReplicaCount", ge=0, description="KEDA's default is 100.")
    scaling_strategy: Literal["default", "custom", "accurate", "eager"] = Field("eager", alias="scalingStrategy")
    queue_length_deduction: int = Field(0, alias="customScalingQueueLengthDeduction")
    running_job_percentage: float | None = Field(None, alias="customScalingRunningJobPercentage", ge=0,
                                                 allow_inf_nan=False)  # fmt: skip
    parameters: dict[str, Any] = Field(default_factory=dict, description="Flow-run parameters of created runs.")
    triggers: list[Trigger] = Field(min_length=1, max_length=1, description="One redis-streams trigger.")

    @field_validator("deployment")
    @classmethod
    def _flow_slash_deployment(cls, value: str) -> str:
        if not re.fullmatch(r"[^/\s]+/[^/\s]+", value):
            raise ValueError(f"{value!r} is not <flow name>/<deployment name> (e.g. activator/activator-lsstcam)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ScaledJobSpec:
        if self.min_replica_count > self.max_replica_count:
            raise ValueError(f"minReplicaCount ({self.min_replica_count}) must be <= maxReplicaCount "
                             f"({self.max_replica_count})")  # fmt: skip
        if self.scaling_strategy == "custom" and self.running_job_percentage is None:
            raise ValueError("scalingStrategy custom needs customScalingRunningJobPercentage")
        return self

    @property
    def metadata(self) -> RedisStreamsMetadata:
        return self.triggers[0].metadata

    @property
    def stream(self) -> str:
        return self.metadata.stream or naming.stream_name(self.instrument)

    @property
    def consumer_group(self) -> str:
        return self.metadata.consumer_group or naming.consumer_group(self.instrument)

    @property
    def metric(self) -> Metric:
        return next(m for m in _METRICS if self.metadata.target_of(m) is not None)

    @property
    def target(self) -> int:
        """Target entries per run (KEDA's targetAverageValue)."""
        value = self.metadata.target_of(self.metric)
        assert value is not None
        return value


class AutoscalerSpec(_Model):
    scaled_jobs: list[ScaledJobSpec] = Field(alias="scaledJobs", min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> AutoscalerSpec:
        for what, values in (("instrument", [s.instrument for s in self.scaled_jobs]),
                             ("stream", [s.stream for s in self.scaled_jobs])):  # fmt: skip
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"each {what} may appear once; repeated: {', '.join(repeated)}")
        return self


def parse_specs(data: Any, *, source: str = "spec") -> list[ScaledJobSpec]:
    """Validate already-loaded YAML/JSON data; raise ``SpecError`` naming the field."""
    try:
        return AutoscalerSpec.model_validate(data).scaled_jobs
    except ValidationError as exc:
        lines = [f"{source}: {_where(data, e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
        raise SpecError("invalid autoscaler spec\n  " + "\n  ".join(lines)) from None


def load_specs(path: Path) -> list[ScaledJobSpec]:
    """Read and validate the spec file; raise ``SpecError`` with the file, field and reason."""
    try:
        text = path.read_bytes()  # YAML reads the encoding; bytes that are not UTF-8 are a YAML error
    except OSError as exc:
        raise SpecError(f"cannot read autoscaler spec {path}: {exc.strerror or exc}") from exc
    return loads_specs(text, source=str(path))


def loads_specs(text: str | bytes, *, source: str = "spec") -> list[ScaledJobSpec]:
    """Parse and validate a spec document; raises nothing but ``SpecError``: ``<source> is not valid YAML: ...``,
    or one line per problem, ``<source>: <field path>: <why>``."""
    try:
        data = yaml.safe_load(text)
    except RecursionError as exc:
        raise SpecError(f"{source} is not valid YAML: nested too deeply") from exc
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a 5,000-digit int, 2001-02-30, a \U escape past U+10FFFF
        raise SpecError(f"{source} is not valid YAML: {exc}") from exc
    return parse_specs(data, source=source)


def dump_specs(specs: list[ScaledJobSpec]) -> str:
    """YAML that ``load_specs`` reads back to the same specs (for generated specs, e.g. the demo's)."""
    body = {"scaledJobs": [s.model_dump(by_alias=True, exclude_none=True) for s in specs]}
    text: str = yaml.safe_dump(body, sort_keys=False)
    return text


_PLAIN_NAME, _PLAIN_LABEL = re.compile(r"[A-Za-z0-9_-]+"), re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _where(data: Any, loc: tuple[int | str, ...]) -> str:
    """``scaledJobs[0] (LSSTCam).triggers[0].metadata.lagCount`` from a pydantic location.

    A key that is not a plain name is quoted (``scaledJobs[0].'max replicas'``), and an entry is labelled with
    its instrument only when that is a plain name, so the path stays one unambiguous line.
    """
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{item}]"]
            node = node[item] if isinstance(node, list) and item < len(node) else None
            label = node.get("instrument") if isinstance(node, dict) else None
            if isinstance(label, str) and _PLAIN_LABEL.fullmatch(label):
                parts[-1] += f" ({label})"
        else:
            parts.append(item if _PLAIN_NAME.fullmatch(item) else repr(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"
