"""The ``pp-output`` event: what one attempt at a visit-detector exported, for the Butler writer.

JSON, UTF-8, one event per visit-detector attempt::

    {"type": "pp-output", "version": 1,
     "about": {"instrument": "LSSTCam", "group": "...", "detector": 94, "run": "LSSTCam/prompt/..."},
     "dimension_records": [{"element": "visit", "record": <daf_butler SerializedDimensionRecord>}, ...],
     "datasets": [{"path": "<relative to the central datastore root>", "ref": <SerializedDatasetRef>}, ...]}

The refs carry their dataset ids, so ingesting an event twice finds the same datasets (and skips
them). ``OutputEvent.from_json`` refuses anything else with ``BadOutputEvent``, whose ``kind`` names
the dead-letter reason: a path must be relative and stay inside the datastore (an event must not make
the writer adopt an arbitrary file).
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
        """Parse and check an event; ``BadOutputEvent("malformed", ...)`` says what is wrong."""
        try:
            body = json.loads(raw or b"")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadOutputEvent("malformed", f"not JSON: {exc}") from exc
        if not isinstance(body, dict) or body.get("type") != EVENT_TYPE or body.get("version") != VERSION:
            raise BadOutputEvent("malformed", f"not a {EVENT_TYPE} event of version {VERSION}")
        try:
            records = [_record(item, universe) for item in body["dimension_records"]]
            datasets = [(_path(item["path"]), _ref(item["ref"], universe)) for item in body["datasets"]]
            about = dict(body.get("about", {}))
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise BadOutputEvent("malformed", f"{type(exc).__name__}: {exc!s:.300}") from exc
        if not datasets:
            raise BadOutputEvent("malformed", "no datasets")
        return cls(records=records, datasets=datasets, about=about)


def _record(item: dict[str, Any], universe: DimensionUniverse) -> DimensionRecord:
    element = item["element"]
    if element not in universe.elements.names:
        raise ValueError(f"unknown dimension element {element!r}")
    record = DimensionRecord.from_simple(SerializedDimensionRecord.model_validate(item["record"]), universe=universe)
    if record.definition.name != element:
        raise ValueError(f"record of {record.definition.name!r} given as {element!r}")
    return record


def _ref(item: dict[str, Any], universe: DimensionUniverse) -> DatasetRef:
    ref = DatasetRef.from_simple(SerializedDatasetRef.model_validate(item), universe=universe)
    if ref.run is None:
        raise ValueError(f"dataset {ref} has no RUN")
    return ref


def _path(path: Any) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or "://" in path or ".." in path.split("/"):
        raise ValueError(f"dataset path {str(path)[:120]!r} is not a relative path inside the datastore")
    return path
