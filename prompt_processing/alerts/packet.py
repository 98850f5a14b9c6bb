"""Alert packets in lsst-alert-packet's schema (default: its latest), framed for the Confluent wire format.

A framed alert is the magic byte 0, the schema id (4 bytes, big-endian; 1101 for schema 11.1) and
the Avro body: what Rubin's alert stream and Confluent's Schema Registry clients read. Records are
built from APDB rows (``DiaSource``/``DiaObject`` columns share the schema's names): values the
schema does not know are dropped, a NaN or missing optional value becomes null, and a missing
required one is a ``ValueError`` naming it, before anything is sent.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import lsst.alert.packet
import numpy as np
import pandas as pd

MAGIC = 0
_HEADER = struct.Struct(">bI")


@dataclass(frozen=True)
class Cutouts:
    """FITS bytes of the three stamps an alert carries."""

    science: bytes
    template: bytes
    difference: bytes


@dataclass(frozen=True, eq=False)
class AlertSchema:
    """One version of the alert schema: its registry id, its Avro definition, and the fields of its
    diaSource and diaObject records (each with whether it may be null, and its Avro type)."""

    schema_id: int
    definition: dict[str, Any]
    parsed: Any
    source_fields: dict[str, tuple[bool, str]]
    object_fields: dict[str, tuple[bool, str]]

    @property
    def version(self) -> str:
        return f"{self.schema_id // 100}.{self.schema_id % 100}"

    def record(
        self, source: Mapping[str, Any], obj: Mapping[str, Any] | None, prior: Sequence[Mapping[str, Any]],
        cutouts: Cutouts | None,
    ) -> dict[str, Any]:  # fmt: skip
        """The alert of ``source`` (an APDB DiaSource row) with its DiaObject, the object's earlier
        DiaSources (oldest first) and the cutouts."""
        return {
            "diaSourceId": int(source["diaSourceId"]),
            "diaSource": _fit(self.source_fields, source, "diaSource"),
            "prvDiaSources": [_fit(self.source_fields, p, "prvDiaSource") for p in prior] or None,
            "diaObject": None if obj is None else _fit(self.object_fields, obj, "diaObject"),
            "cutoutScience": None if cutouts is None else cutouts.science,
            "cutoutTemplate": None if cutouts is None else cutouts.template,
            "cutoutDifference": None if cutouts is None else cutouts.difference,
        }

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """``record`` in Confluent framing; ValueError if it does not fit the schema."""
        body = io.BytesIO()
        body.write(_HEADER.pack(MAGIC, self.schema_id))
        try:
            fastavro.schemaless_writer(body, self.parsed, dict(record))
        except (TypeError, ValueError, AttributeError) as exc:
            # fastavro's message quotes the whole record and schema: its end names the field.
            raise ValueError(f"alert {record.get('diaSourceId')} does not fit schema {self.version}: "
                             f"...{str(exc)[-200:]}") from exc  # fmt: skip
        return body.getvalue()

    def decode(self, payload: bytes) -> dict[str, Any]:
        """An alert from its framed bytes; ValueError for another schema id or no framing."""
        if len(payload) < _HEADER.size:
            raise ValueError(f"{len(payload)} bytes: too short for a framed alert")
        magic, schema_id = _HEADER.unpack_from(payload)
        if magic != MAGIC or schema_id != self.schema_id:
            raise ValueError(f"framing magic {magic}, schema id {schema_id}: expected {MAGIC}, {self.schema_id}")
        record = fastavro.schemaless_reader(io.BytesIO(payload[_HEADER.size:]), self.parsed, None)
        return dict(record)  # type: ignore[arg-type]


def schema_id(payload: bytes) -> int:
    """The schema id in a framed alert's header (ValueError if not framed)."""
    if len(payload) < _HEADER.size or payload[0] != MAGIC:
        raise ValueError("not a Confluent-framed message")
    return int(_HEADER.unpack_from(payload)[1])


@cache
def load_schema(version: str | None = None) -> AlertSchema:
    """The alert schema ``version`` ("11.1"), default the package's latest; ValueError if it has none."""
    if version is None:
        schema = lsst.alert.packet.Schema.from_file()
    else:
        major, _, minor = version.partition(".")
        path = Path(lsst.alert.packet.get_schema_path(int(major), int(minor or 0)))
        file = path / f"lsst.v{major}_{minor or 0}.alert.avsc"
        if not file.exists():
            raise ValueError(f"lsst-alert-packet has no alert schema {version} ({file})")
        schema = lsst.alert.packet.Schema.from_file(str(file))
    definition = schema.definition
    return AlertSchema(int(schema.get_schema_id()), definition, fastavro.parse_schema(definition),
                       _fields(definition, "diaSource"), _fields(definition, "diaObject"))  # fmt: skip


def _fields(definition: dict[str, Any], name: str) -> dict[str, tuple[bool, str]]:
    """The fields of the alert's record ``name``: whether each may be null, and its (non-null) Avro type."""
    field = next(f for f in definition["fields"] if f["name"] == name)
    kind = field["type"]
    record = next(t for t in kind if isinstance(t, dict)) if isinstance(kind, list) else kind
    fields = {}
    for f in record["fields"]:
        types = f["type"] if isinstance(f["type"], list) else [f["type"]]
        fields[f["name"]] = ("null" in types, next((str(t) for t in types if t != "null"), "null"))
    return fields


def _fit(fields: dict[str, tuple[bool, str]], row: Mapping[str, Any], what: str) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for name, (nullable, kind) in fields.items():
        value = _plain(row.get(name))
        if value is None and not nullable:
            raise ValueError(f"{what} {row.get('diaSourceId', row.get('diaObjectId'))}: required {name} is missing")
        if kind in ("int", "long") and isinstance(value, float) and value.is_integer():
            value = int(value)  # a DataFrame row of mixed columns holds its integers as floats
        record[name] = value
    return record


def _plain(value: Any) -> Any:
    """numpy scalars as Python values; NaN, NaT and pandas' NA as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value
