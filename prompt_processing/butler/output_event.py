"""The ``pp-output`` event: what one attempt at a visit-detector exported, for the Butler writer.

JSON, UTF-8, one event per visit-detector attempt::

    {"type": "pp-output", "version": 1,
     "about": {"instrument": "LSSTCam", "group": "...", "detector": 94, "run": "LSSTCam/prompt/..."},
     "dimension_records": [{"element": "visit", "record": <daf_butler SerializedDimensionRecord>}, ...],
     "datasets": [{"path": "<relative to the central datastore root>", "ref": <SerializedDatasetRef>}, ...]}

The refs carry their dataset ids, so ingesting an event twice finds the same datasets (and skips
them). ``OutputEvent.from_json`` refuses anything else with ``BadOutputEvent``, whose ``kind`` names
the dead-letter reason and whose text starts with the field at fault (``datasets[2].path: ...``, or
``message: ...`` for input that is not a JSON object): a path must be relative and stay inside the
datastore (an event must not make the writer adopt an arbitrary file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lsst.daf.butler import (
    DatasetRef,
    DimensionRecord,
    DimensionUniverse,
    FileDataset,
    SerializedDatasetRef,
    SerializedDimensionRecord,
)
from pydantic import ValidationError

EVENT_TYPE, VERSION = "pp-output", 1


class BadOutputEvent(ValueError):
    """An event the writer cannot ingest; ``kind`` is its dead-letter reason code."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass
class OutputEvent:
    records: list[DimensionRecord]
    datasets: list[tuple[str, DatasetRef]]  # (path relative to the central datastore root, ref)
    about: dict[str, Any]

    @property
    def runs(self) -> set[str]:
        return {ref.run for _, ref in self.datasets}

    def file_datasets(self) -> list[FileDataset]:
        return [FileDataset(path=path, refs=[ref]) for path, ref in self.datasets]

    def to_json(self) -> bytes:
        return json.dumps({
            "type": EVENT_TYPE, "version": VERSION, "about": self.about,
            "dimension_records": [{"element": r.definition.name, "record": r.to_simple().model_dump(mode="json")}
                                  for r in self.records],
            "datasets": [{"path": path, "ref": ref.to_simple().model_dump(mode="json")} for path, ref in self.datasets],
        }).encode()  # fmt: skip

    @classmethod
    def from_json(cls, raw: bytes | None, universe: DimensionUniverse) -> OutputEvent:
        """Parse and check an event; raises nothing but ``BadOutputEvent("malformed", "<field>: <why>")``."""
        body = _load(raw or b"")
        version = body.get("version")
        if body.get("type") != EVENT_TYPE:
            raise _malformed(f"type: not a {EVENT_TYPE} event of version {VERSION} (got {body.get('type')!r:.60})")
        if type(version) is not int or version != VERSION:
            raise _malformed(f"version: not a {EVENT_TYPE} event of version {VERSION} (got {version!r:.60})")
        about = body.get("about", {})
        if not isinstance(about, dict):
            raise _malformed(f"about: not a JSON object (got {type(about).__name__})")
        records = [_record(item, universe, f"dimension_records[{i}]")
                   for i, item in enumerate(_list(body, "dimension_records"))]  # fmt: skip
        datasets = [(_path(item, f"datasets[{i}]"), _ref(item, universe, f"datasets[{i}]"))
                    for i, item in enumerate(_list(body, "datasets"))]  # fmt: skip
        if not datasets:
            raise _malformed("datasets: no datasets")
        return cls(records=records, datasets=datasets, about=about)


def _malformed(reason: str) -> BadOutputEvent:
    return BadOutputEvent("malformed", reason)


def _load(raw: bytes) -> dict[str, Any]:
    """The event's JSON object; ``message: ...`` for invalid UTF-8 or JSON, too deep, a 5,000-digit number."""
    try:
        body = json.loads(raw)
    except RecursionError as exc:
        raise _malformed("message: not JSON: nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer beyond 4,300 digits
        raise _malformed(f"message: not JSON: {exc!s:.200}") from exc
    if not isinstance(body, dict):
        raise _malformed(f"message: not a JSON object (got {type(body).__name__})")
    return body


def _list(body: dict[str, Any], field: str) -> list[dict[str, Any]]:
    """``body[field]``, a list of JSON objects."""
    items = body.get(field)
    if not isinstance(items, list):
        raise _malformed(f"{field}: not a list (got {type(items).__name__})")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _malformed(f"{field}[{index}]: not a JSON object (got {type(item).__name__})")
    return items


def _record(item: dict[str, Any], universe: DimensionUniverse, where: str) -> DimensionRecord:
    element = item.get("element")
    if not isinstance(element, str) or element not in universe.elements.names:
        raise _malformed(f"{where}.element: unknown dimension element {element!r:.60}")
    simple = _object(item, "record", where)
    try:
        record = DimensionRecord.from_simple(SerializedDimensionRecord.model_validate(simple), universe=universe)
    except _BUTLER_REFUSALS as exc:
        raise _malformed(f"{where}.record: {_why(exc)}") from exc
    if record.definition.name != element:
        raise _malformed(f"{where}.element: record of {record.definition.name!r} given as {element!r}")
    return record


def _ref(item: dict[str, Any], universe: DimensionUniverse, where: str) -> DatasetRef:
    simple = _object(item, "ref", where)
    try:
        ref = DatasetRef.from_simple(SerializedDatasetRef.model_validate(simple), universe=universe)
    except _BUTLER_REFUSALS as exc:
        raise _malformed(f"{where}.ref: {_why(exc)}") from exc
    if not ref.run:
        raise _malformed(f"{where}.ref: dataset {ref} has no RUN")
    return ref


def _object(item: dict[str, Any], field: str, where: str) -> dict[str, Any]:
    value = item.get(field)
    if not isinstance(value, dict):
        raise _malformed(f"{where}.{field}: not a JSON object (got {type(value).__name__})")
    return value


def _path(item: dict[str, Any], where: str) -> str:
    path = item.get("path")
    if not isinstance(path, str) or not path or path.startswith("/") or "://" in path or ".." in path.split("/"):
        raise _malformed(f"{where}.path: dataset path {str(path)[:120]!r} is not a relative path inside the datastore")
    return path


# What daf_butler's deserialisation raises for a record or ref it cannot rebuild: pydantic's ValidationError
# (a ValueError), its own checks' ValueError, TypeError, KeyError, and sphgeom's RuntimeError for a region
# that does not decode. Each is the event's fault, not the writer's.
_BUTLER_REFUSALS: tuple[type[Exception], ...] = (ValueError, TypeError, LookupError, RuntimeError, ArithmeticError)


def _why(exc: Exception) -> str:
    """One line: pydantic's ``loc: msg`` per problem, else the exception's type and text."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(whole)'}: {e['msg']}"
                         for e in exc.errors(include_url=False))[:300]  # fmt: skip
    return f"{type(exc).__name__}: {exc!s:.200}"
