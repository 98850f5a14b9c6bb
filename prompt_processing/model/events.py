"""The NextVisit event (the summit's ``logevent_nextVisit``) and the fanned-out stream entry.

Field names are the summit's, unchanged. Parsing is strict: a wrong type is an error,
never a silent coercion, and every error names the field. Stream entries are Redis
string fields; ``FanOutEntry.from_fields(entry.to_fields())`` gives back an equal entry
for every valid event (floats are written with ``repr``, which round-trips exactly), and
``from_fields`` refuses anything else with ``EventError`` naming the field (``pp_devkit.fuzzing``).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from enum import IntEnum
from typing import Annotated, Any, TypeGuard

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

# TAI - UTC since 2017-01-01; the summit's sndStamp is TAI, the EFD stamp UTC.
TAI_MINUS_UTC_S = 37.0


class CoordinateSystem(IntEnum):
    NONE = 1
    ICRS = 2
    OBSERVED = 3
    MOUNT = 4


class RotationSystem(IntEnum):
    NONE = 1
    SKY = 2
    HORIZON = 3
    MOUNT = 4


class Dome(IntEnum):
    CLOSED = 1
    OPEN = 2
    EITHER = 3


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid UTF-8 text (no lone surrogates)") from exc
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Text = Annotated[str, AfterValidator(_utf8)]
Finite = Annotated[float, AfterValidator(_finite)]
GroupId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[!-~]+$")]
_GROUP_ID = re.compile(r"[!-~]{1,128}")


def is_group_id(value: object) -> TypeGuard[str]:
    """A valid ``groupId`` (as ``NextVisit`` takes it): 1 to 128 printable ASCII characters, no spaces."""
    return isinstance(value, str) and _GROUP_ID.fullmatch(value) is not None


class EventError(ValueError):
    """A message that is not a valid event; ``str()`` says which field and why."""


class NextVisit(BaseModel):
    """One announced visit. Unknown summit bookkeeping fields are accepted and dropped."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    salIndex: int = Field(ge=0)
    scriptSalIndex: int
    instrument: Text = Field(min_length=1, max_length=64)
    groupId: GroupId
    coordinateSystem: CoordinateSystem
    position: tuple[Finite, Finite]
    startTime: Finite = Field(gt=0, description="Shutter opens, TAI unix seconds.")
    rotationSystem: RotationSystem
    cameraAngle: Finite
    filters: Text
    dome: Dome
    duration: Finite = Field(ge=0, description="Exposure time of the visit, seconds.")
    nimages: int = Field(ge=0, description="Number of snaps; 0 = unknown.")
    survey: Text
    totalCheckpoints: int = Field(ge=0)
    private_sndStamp: Finite = Field(description="When the summit sent it, TAI unix seconds.")
    private_efdStamp: Finite | None = Field(None, description="EFD stamp, UTC unix seconds.")

    @classmethod
    def from_json(cls, raw: bytes | str) -> NextVisit:
        """Parse one Kafka message value; raises EventError with a readable reason."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise EventError(_describe(exc)) from exc

    def sent_at_utc(self) -> float:
        """When the event was sent, UTC unix seconds (EFD stamp, else sndStamp less TAI-UTC)."""
        if self.private_efdStamp is not None:
            return self.private_efdStamp
        return self.private_sndStamp - TAI_MINUS_UTC_S

    def shutter_open_utc(self) -> float:
        """When the shutter opens, UTC unix seconds."""
        return self.startTime - TAI_MINUS_UTC_S

    def day_obs(self) -> str:
        """The observing night of the visit, ``YYYYMMDD`` (Rubin's convention: UTC - 12 h)."""
        return day_obs(self.shutter_open_utc())

    def stream_fields(self) -> dict[str, str]:
        """The event as Redis string fields (every field but an absent EFD stamp)."""
        fields: dict[str, str] = {}
        for name, value in self:
            if value is None:
                continue
            fields[name] = _to_field(value)
        return fields


class FanOutEntry(BaseModel):
    """One unit of work: a visit for one detector, as stored in ``instrument:<name>``."""

    model_config = ConfigDict(frozen=True)

    visit: NextVisit
    detector: int = Field(ge=0)

    def to_fields(self) -> dict[str, str]:
        return {**self.visit.stream_fields(), "detector": str(self.detector)}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes] | dict[str, str]) -> FanOutEntry:
        """Rebuild an entry read from Redis (bytes or decoded strings).

        Raises nothing but EventError, ``not a fan-out entry: <field>: <why>`` naming the field at fault.
        """
        data: dict[str, Any] = {}
        for key, value in fields.items():
            name = _text(key, "field name")
            data[name] = _from_field(name, _text(value, name))
        if "detector" not in data:
            raise EventError("not a fan-out entry: detector: Field required")
        detector = data.pop("detector")
        try:
            return cls(visit=NextVisit.model_validate(data, strict=False), detector=detector)
        except ValidationError as exc:
            raise EventError(f"not a fan-out entry: {_describe(exc)}") from exc


_INT_FIELDS = {"salIndex", "scriptSalIndex", "coordinateSystem", "rotationSystem", "dome", "nimages",
               "totalCheckpoints"}  # fmt: skip
_FLOAT_FIELDS = {"startTime", "cameraAngle", "duration", "private_sndStamp", "private_efdStamp"}


def day_obs(utc_s: float) -> str:
    """The observing night a moment belongs to, ``YYYYMMDD``: the UTC date 12 hours earlier (Rubin's dayObs)."""
    return datetime.fromtimestamp(utc_s - 12 * 3600, tz=UTC).strftime("%Y%m%d")


def _to_field(value: object) -> str:
    if isinstance(value, bool):
        raise TypeError("booleans are not event fields")
    if isinstance(value, int):  # IntEnum included
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return str(value)


def _from_field(name: str, value: str) -> object:
    """A stream field's value as NextVisit reads it (its checks come after); EventError naming the field."""
    try:
        if name in _INT_FIELDS or name == "detector":
            if not _INTEGER.fullmatch(value):
                raise ValueError(f"not an integer: {value!r:.40}")
            return int(value)  # ValueError beyond 4,300 digits
        if name in _FLOAT_FIELDS:
            return float(value)
        if name == "position":
            position = json.loads(value)
            return tuple(position) if isinstance(position, list) else position
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deeply
        raise EventError(f"not a fan-out entry: {name}: {exc!s:.120}") from exc
    return value


_INTEGER = re.compile(r"-?[0-9]+")


def _text(value: bytes | str, name: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(f"not a fan-out entry: {name}: not UTF-8 text ({value[:40]!r})") from exc


def _describe(exc: ValidationError) -> str:
    """One line per problem: ``field: message (got <value>)``."""
    lines = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "message"
        got = error.get("input")
        shown = "" if error["type"] in ("missing", "json_invalid") else f" (got {got!r:.60})"
        lines.append(f"{where}: {error['msg']}{shown}")
    return "; ".join(lines)
