"""Fuzzing the service's input parsers: valid seeds, mutations of them, and the contract each parser keeps.

Every input the service reads from outside goes through one parser, and each is a ``Target`` here:

==================  ================================================  =====================
target              parser                                            documented refusal
==================  ================================================  =====================
next-visit          ``model.admission.admit`` (``NextVisit``)         ``Rejected``
s3-notification     ``services.router.parse_notification``            ``BadNotification``
sidecar             ``services.router.presence_from_sidecar``         ``BadNotification``
raw-key             ``model.layout.parse_raw_key``                    ``LayoutError``
stream-entry        ``model.events.FanOutEntry.from_fields``          ``EventError``
pp-output           ``butler.output_event.OutputEvent.from_json``     ``BadOutputEvent``
autoscaler-spec     ``autoscaler.spec.loads_specs``                   ``SpecError``
==================  ================================================  =====================

Cases are hypothesis strategies seeded from valid inputs, made the way the simulator, the fan-out and the
activators make them, then mutated by ``pp_devkit.mutations``: at the byte level (bit flips, inserted, deleted
or duplicated bytes, truncation, ``1e999``, ``NaN``, invalid UTF-8, deep nesting) and in their structure (a
field dropped, renamed, added, or replaced by a value of the wrong type, one at an edge of its type, another
field's). Some cases stay valid, so the accepting side is exercised too.

``Target.check(case)`` is the property. It returns ``"accepted"`` or ``"rejected"`` and raises
``PropertyViolation`` unless:

* the parser accepts and its result is well-formed: it round-trips through the matching writer (stream
  fields, the key builder, ``to_json``, ``dump_specs``) and every text in it encodes as UTF-8; or
* it refuses with its documented exception, with a reason that starts by naming the field at fault
  (``groupId: ...``, ``Records[0].s3.object.key: ...``), or ``message: ...`` for an input that is not
  a document of the right kind at all.

Any other exception (TypeError, RecursionError, OverflowError, ...) is a violation. ``tests/test_fuzz.py``
(a few hundred cases per target) and ``bench/fuzz.py`` (10,000 and more) both run these properties.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import quote_plus, unquote_plus

from hypothesis import strategies as st
from lsst.daf.butler import DataCoordinate, DatasetRef, DimensionUniverse

from pp_devkit.mutations import (
    DEEP_JSON,
    DEEP_YAML,
    ODD_TEXTS,
    RAW_YAML,
    TreePath,
    document_cases,
    dumps_json,
    dumps_yaml,
    mutate_bytes,
    mutate_text,
)
from pp_devkit.night import raw_header
from pp_devkit.sim import next_visit_message, plan_visits
from prompt_processing.autoscaler.spec import SpecError, dump_specs, loads_specs
from prompt_processing.butler import repo
from prompt_processing.butler.output_event import BadOutputEvent, OutputEvent
from prompt_processing.butler.records import check_header, visit_records
from prompt_processing.model import layout
from prompt_processing.model.admission import DeadLetterKind, Rejected, admit
from prompt_processing.model.events import EventError, FanOutEntry, NextVisit, is_group_id
from prompt_processing.model.instruments import HSC, LATISS, LSSTCAM, Instrument
from prompt_processing.services.router import BadNotification, parse_notification, presence_from_sidecar

Outcome = Literal["accepted", "rejected"]

NOW_UTC_S = 1_800_000_000.0
ACTIVE = {"LSSTCam": (1, 2, 94), "LATISS": (0,)}  # HSC is a known camera this fan-out does not serve
EXPIRATION_S = 3600.0
INSTRUMENTS = (LSSTCAM, LATISS, HSC)


class PropertyViolation(AssertionError):
    """A parser broke its contract on one input; the message says how."""


@dataclass(frozen=True)
class Target:
    """One parser under test: its cases and the property each case must keep."""

    name: str
    parser: str
    refusal: str
    cases: st.SearchStrategy[Any]
    check: Callable[[Any], Outcome]


# -- the property ------------------------------------------------------------------------------------------


def attempt[T](call: Callable[[], T], refusal: type[Exception]) -> T | Exception:
    """``call()``'s result, or the ``refusal`` it raised; any other exception is a PropertyViolation (a crash)."""
    try:
        return call()
    except refusal as exc:
        return exc
    except Exception as exc:
        raise PropertyViolation(f"crashed: {type(exc).__name__}: {exc!s:.300}") from exc


def require(condition: bool, what: str) -> None:
    if not condition:
        raise PropertyViolation(what)


def require_field(reason: str, pattern: re.Pattern[str]) -> None:
    """The refusal's reason starts by naming the field at fault (``pattern``)."""
    require(pattern.match(reason) is not None, f"the reason does not name the field: {reason[:300]!r}")


def well_formed(check: Callable[[], None]) -> Outcome:
    """Run the checks of an accepted result: a failure or a crash there is a violation too."""
    try:
        check()
    except PropertyViolation:
        raise
    except Exception as exc:
        raise PropertyViolation(f"accepted, but the result is not usable: {type(exc).__name__}: {exc!s:.300}") from exc
    return "accepted"


def is_text(*values: str) -> bool:
    """Every value encodes as UTF-8 (no lone surrogates): Redis, Kafka and S3 can carry it."""
    try:
        for value in values:
            value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _fields(*names: str) -> str:
    return "|".join(re.escape(n) for n in names)


# -- seeds: valid inputs, made the way the service's producers make them -------------------------------


@functools.cache
def next_visit_seeds() -> tuple[dict[str, Any], ...]:
    """NextVisit bodies from the simulator for each camera, sent at ``NOW_UTC_S``; some without EFD stamp."""
    bodies = []
    for instrument in INSTRUMENTS:
        for index, plan in enumerate(plan_visits(instrument, 3, seed=11)):
            body = next_visit_message(instrument, plan, now_utc_s=NOW_UTC_S, lead_s=25, seq_num=index + 1)
            if index == 2:
                del body["private_efdStamp"]
            bodies.append(body)
    return tuple(bodies)


def _detector_of(instrument: Instrument) -> int:
    return ACTIVE.get(instrument.name, (instrument.n_detectors - 1,))[-1]


@functools.cache
def raw_keys() -> tuple[layout.RawKey, ...]:
    """Parsed raw keys of the seed visits (their first snap), one detector per camera."""
    keys = []
    for body in next_visit_seeds():
        instrument = _instrument(body["instrument"])
        header = raw_header(instrument, body, _detector_of(instrument), body["scriptSalIndex"] % 1000)
        keys.append(layout.parse_raw_key(layout.raw_key(instrument, str(header["DAYOBS"]), header["OBSID"],
                                                        _detector_of(instrument))))  # fmt: skip
    return tuple(keys)


def _instrument(name: str) -> Instrument:
    return next(i for i in INSTRUMENTS if i.name == name)


@functools.cache
def universe() -> DimensionUniverse:
    return DimensionUniverse()


@functools.cache
def output_event_seeds() -> tuple[dict[str, Any], ...]:
    """pp-output events as an activator exports them: the visit's dimension records and four output refs."""
    events = []
    for body in next_visit_seeds()[:6:3]:
        instrument = _instrument(body["instrument"])
        visit, detector = NextVisit.from_json(json.dumps(body)), _detector_of(instrument)
        raw = check_header(raw_header(instrument, body, detector, 7), visit, detector, 0)
        run = repo.output_run(visit.instrument, visit.day_obs(), visit.groupId, "a1")
        data_id = DataCoordinate.standardize(instrument=instrument.name, visit=raw.visit_id, detector=detector,
                                             universe=universe())  # fmt: skip
        refs = [(f"{run}/{name}/{name}_{detector}.fits", DatasetRef(repo.DATASET_TYPES[name].dataset_type(universe()),
                                                                    data_id, run=run))
                for name in repo.OUTPUT_TYPES]  # fmt: skip
        event = OutputEvent(records=visit_records(universe(), visit, raw), datasets=refs,
                            about={"instrument": instrument.name, "group": visit.groupId, "detector": detector,
                                   "run": run})  # fmt: skip
        events.append(json.loads(event.to_json()))
    return tuple(events)


def _job(instrument: str, **fields: Any) -> dict[str, Any]:
    return {"instrument": instrument, "deployment": f"activator/activator-{instrument.lower()}",
            "triggers": [{"type": "redis-streams", "metadata": {"lagCount": "1"}}]} | fields  # fmt: skip


SPEC_SEEDS: tuple[dict[str, Any], ...] = (
    {"scaledJobs": [_job("LSSTCam", pollingInterval=1, minReplicaCount=1, maxReplicaCount=8, scalingStrategy="eager",
                         triggers=[{"type": "redis-streams", "metadata": {
                             "stream": "instrument:lsstcam", "consumerGroup": "lsstcam_consumer_group",
                             "lagCount": "1", "activationLagCount": "0"}}]),
                    _job("LATISS", maxReplicaCount=2), _job("HSC", maxReplicaCount=4)]},
    {"scaledJobs": [_job("LSSTCam", pollingInterval=2, minReplicaCount=3, maxReplicaCount=1700)]},
    {"scaledJobs": [_job("LATISS", scalingStrategy="custom", customScalingRunningJobPercentage=0.5,
                         customScalingQueueLengthDeduction=1, parameters={"max_visits": 10, "note": "x"},
                         triggers=[{"type": "redis-streams", "name": "t", "metadata": {"pendingEntriesCount": 5}}])]},
    {"scaledJobs": [_job("HSC", scalingStrategy="accurate", pollingInterval=0.5,
                         triggers=[{"type": "redis-streams", "metadata": {"streamLength": "10"}}])]},
)  # fmt: skip


# -- the targets -------------------------------------------------------------------------------------------

_NEXT_VISIT_REASON = re.compile(rf"^(?:message|{_fields(*NextVisit.model_fields)})(?:\.\d+)?: ")


def check_next_visit(raw: bytes) -> Outcome:
    """``admit``: Rejected naming the field (kind malformed exactly for ``message: ``), or a usable visit."""
    got = attempt(lambda: admit(raw, now_utc_s=NOW_UTC_S, active=ACTIVE, message_expiration_s=EXPIRATION_S),
                  Rejected)  # fmt: skip
    if isinstance(got, Rejected):
        require_field(got.reason, _NEXT_VISIT_REASON)
        require((got.kind is DeadLetterKind.MALFORMED) == got.reason.startswith("message: "),
                f"kind {got.kind} does not fit the reason {got.reason[:200]!r}")  # fmt: skip
        return "rejected"
    assert not isinstance(got, Exception)
    visit, name, detectors = got

    def usable() -> None:
        require(ACTIVE.get(name) == detectors and visit.instrument.lower() == name.lower(), f"wrong camera {name}")
        require(re.fullmatch(r"\d{8}", visit.day_obs()) is not None, "no dayObs")
        require(NextVisit.model_validate_json(visit.model_dump_json()) == visit, "the visit does not round-trip")
        _entry_round_trips(FanOutEntry(visit=visit, detector=detectors[0]))

    return well_formed(usable)


def _entry_round_trips(entry: FanOutEntry) -> None:
    fields = entry.to_fields()
    require(is_text(*fields, *fields.values()), "stream fields are not UTF-8 text")
    again = FanOutEntry.from_fields({k.encode(): v.encode() for k, v in fields.items()})
    require(again == entry, "the entry does not round-trip through its stream fields")


def check_stream_entry(fields: dict[bytes, bytes] | dict[str, str]) -> Outcome:
    """``FanOutEntry.from_fields``: EventError naming the field (one of the entry's, an input's, or ``field
    name`` for a name that is not UTF-8), or an entry that round-trips."""
    got = attempt(lambda: FanOutEntry.from_fields(fields), EventError)
    if isinstance(got, EventError):
        given = {k.decode("utf-8", "replace") if isinstance(k, bytes) else k for k in fields}
        names = {"field name", "detector", *NextVisit.model_fields, *given}
        require_field(str(got), re.compile(rf"^not a fan-out entry: (?:{_fields(*names)})(?:\.\d+)?: "))
        return "rejected"
    assert isinstance(got, FanOutEntry)
    return well_formed(lambda: _entry_round_trips(got))


ODD_FIELD_VALUES = (b"", b"nan", b"inf", b"-inf", b"1e999", b"-1", b"9" * 5_000, b"\xff", b"\xed\xa0\x80",
                    b"[" * DEEP_JSON, b"[1]", b"5", b'"ab"', b"[1e999, 0]", b"[[1, 2], 3]", "١٢".encode(), b" 1 ",
                    b"1_0", b"true", b"null", b"0x10", b"1.5", b"{}")  # fmt: skip


@st.composite
def mutate_fields(draw: st.DrawFn, seed: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Stream fields with one to three fields dropped, swapped, replaced by odd values or byte-mutated."""
    fields = dict(seed)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([*sorted(fields), b"detector", b"unknown"]))
        action = draw(st.sampled_from(("drop", "odd", "bytes", "swap")))
        if action == "drop":
            fields.pop(name, None)
        elif action == "odd":
            fields[name] = draw(st.sampled_from(ODD_FIELD_VALUES) | st.binary(max_size=12))
        elif action == "bytes":
            fields[name] = draw(mutate_bytes(fields.get(name, b"")))
        elif fields:
            fields[name] = fields[draw(st.sampled_from(sorted(fields)))]
    return fields


def _stream_entry_cases() -> st.SearchStrategy[dict[bytes, bytes] | dict[str, str]]:
    seeds = [{k.encode(): v.encode() for k, v in FanOutEntry(visit=NextVisit.from_json(json.dumps(body)),
                                                             detector=_detector_of(_instrument(body["instrument"])))
              .to_fields().items()} for body in next_visit_seeds()]  # fmt: skip
    mutated = st.sampled_from(seeds).flatmap(mutate_fields)
    as_text = mutated.map(lambda f: {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
                                     for k, v in f.items()})  # fmt: skip
    return st.one_of(st.sampled_from(seeds), mutated, as_text)


_NOTIFICATION_REASON = re.compile(
    r"^not an S3 event notification: (?:message|Records(?:\[\d+\](?:\.(?:eventName|eventTime|"
    r"s3(?:\.(?:bucket|object)(?:\.(?:name|key))?)?))?)?): "
)


def check_notification(raw: bytes) -> Outcome:
    """``parse_notification``: BadNotification naming the record field, or one (bucket, key, time) of
    non-empty UTF-8 text per ObjectCreated record, with the key URL-decoded."""
    got = attempt(lambda: parse_notification(raw), BadNotification)
    if isinstance(got, BadNotification):
        require_field(str(got), _NOTIFICATION_REASON)
        return "rejected"
    assert isinstance(got, list)

    def usable() -> None:
        created = [r for r in json.loads(raw)["Records"] if str(r.get("eventName", "")).startswith("ObjectCreated")]
        require(len(got) == len(created), f"{len(got)} of {len(created)} ObjectCreated records")
        for (bucket, key, landed_at), record in zip(got, created, strict=True):
            require(bool(bucket) and bucket == record["s3"]["bucket"]["name"], f"bucket {bucket!r}")
            require(key == unquote_plus(record["s3"]["object"]["key"]), f"key {key!r} is not the record's")
            require(is_text(bucket, key, landed_at), "not UTF-8 text")

    return well_formed(usable)


def _notification_seeds() -> list[dict[str, Any]]:
    bodies = []
    for index, raw in enumerate(raw_keys()):
        keys = [raw.fits_key, raw.sidecar_key, f"{raw.sidecar_key} copy+1%.json"][: 1 + index % 3]
        records = [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventTime": "2026-11-28T01:02:03.456Z",
                    "eventName": "ObjectCreated:Put" if i < 2 else "ObjectRemoved:Delete",
                    "s3": {"bucket": {"name": ("pp-raw", "rubin.summit-1")[index % 2]},
                           "object": {"key": quote_plus(key, safe="/")}}} for i, key in enumerate(keys)]  # fmt: skip
        bodies.append({"Records": records})
    return bodies


def check_sidecar(case: tuple[bytes, layout.RawKey]) -> Outcome:
    """``presence_from_sidecar``: BadNotification naming GROUPID or CURINDEX, or (its group, snap >= 0)."""
    sidecar, raw = case
    got = attempt(lambda: presence_from_sidecar(sidecar, raw), BadNotification)
    if isinstance(got, BadNotification):
        require_field(str(got), re.compile(rf"^sidecar {re.escape(raw.sidecar_key)} unreadable: "
                                           r"(?:message|GROUPID|CURINDEX): "))  # fmt: skip
        return "rejected"
    assert isinstance(got, tuple)
    group, snap = got

    def usable() -> None:
        require(is_group_id(group) and group == json.loads(sidecar)["GROUPID"], f"group {group!r}")
        require(type(snap) is int and snap >= 0, f"snap {snap!r}")

    return well_formed(usable)


def _sidecar_seeds() -> list[dict[str, Any]]:
    seeds: list[dict[str, Any]] = [{"GROUPID": "2026-11-28T01:02:03.456"}]
    for body in next_visit_seeds():
        instrument = _instrument(body["instrument"])
        for snap in range(2):
            seeds.append(raw_header(instrument, body, _detector_of(instrument), 7, snap))
    return seeds


KEY_PARTS: dict[str, tuple[str, ...]] = {
    "instrument": ("LSSTCam", "LATISS", "HSC", "lsstcam", "DECam", "", "LSST Cam"),
    "day": ("20261128", "2026112", "\u0662\u0660\u0662\u0666\u0661\u0661\u0662\u0668", "99999999", "2026-11-28", ""),
    "detector": ("R22_S11", "RXX_S00", "ccd103", "ccd104", "R00_S11", "R22_S11_x", "", "\u0661"),
    "ext": ("fits", "json", "txt", "FITS", "", "fits.json"),
}


EXTS = ("fits", "json")


@st.composite
def raw_key_cases(draw: st.DrawFn) -> str:
    """Camera keys of each instrument, some parts swapped for near misses, then maybe byte-mutated."""
    instrument = draw(st.sampled_from(INSTRUMENTS))
    day, seq = draw(st.sampled_from(("20261128", "20270101"))), draw(st.integers(0, 999_999))
    obs = layout.obs_id(instrument, day, seq)
    parts = {"instrument": instrument.name, "day": day, "obs": obs, "obs2": obs, "ext": draw(st.sampled_from(EXTS)),
             "detector": draw(st.sampled_from(instrument.detector_names))}  # fmt: skip
    for _ in range(draw(st.integers(0, 2))):
        part = draw(st.sampled_from(sorted(parts)))
        parts[part] = draw(st.sampled_from(KEY_PARTS.get(part, (obs.lower(), obs[:-1], f"{obs}0", "MC_O_x")))
                           | st.sampled_from(ODD_TEXTS))  # fmt: skip
    key = "{instrument}/{day}/{obs}/{obs2}_{detector}.{ext}".format(**parts)
    return draw(mutate_text(key)) if draw(st.booleans()) else key


def check_raw_key(key: str) -> Outcome:
    """``parse_raw_key``: LayoutError naming the part of the key, or an ASCII key its builder gives back."""
    got = attempt(lambda: layout.parse_raw_key(key), layout.LayoutError)
    if isinstance(got, layout.LayoutError):
        require_field(str(got), re.compile(r"^(?:key|instrument|dayObs|obsId|detector|extension): "))
        return "rejected"
    assert isinstance(got, layout.RawKey)

    def usable() -> None:
        require(key.isascii(), f"accepted a key that is not ASCII: {key!r}")
        require(key == (got.fits_key if got.ext == "fits" else got.sidecar_key), "the key does not round-trip")
        require(layout.parse_raw_key(got.sidecar_key) == replace(got, ext="json"), "its sidecar key is refused")

    return well_formed(usable)


_OUTPUT_REASON = re.compile(r"^(?:message|type|version|about|dimension_records(?:\[\d+\](?:\.(?:element|record))?)?"
                            r"|datasets(?:\[\d+\](?:\.(?:path|ref))?)?): ")  # fmt: skip
OUTPUT_FOCUS: tuple[TreePath, ...] = (
    ("type",), ("version",), ("about",), ("dimension_records",), ("datasets",), ("dimension_records", 0),
    ("dimension_records", 0, "element"), ("dimension_records", 0, "record"), ("dimension_records", 3, "record"),
    ("datasets", 0), ("datasets", 0, "path"), ("datasets", 0, "ref"), ("datasets", 0, "ref", "run"),
    ("datasets", 0, "ref", "id"), ("datasets", 0, "ref", "datasetType"), ("datasets", 0, "ref", "dataId"),
)  # fmt: skip


def check_output_event(raw: bytes) -> Outcome:
    """``OutputEvent.from_json``: BadOutputEvent("malformed") naming the field, or an event whose
    ``to_json`` reads back to the same event, with relative paths and a RUN on every ref."""
    got = attempt(lambda: OutputEvent.from_json(raw, universe()), BadOutputEvent)
    if isinstance(got, BadOutputEvent):
        require(got.kind == "malformed", f"kind {got.kind!r}")
        require_field(str(got), _OUTPUT_REASON)
        return "rejected"
    assert isinstance(got, OutputEvent)

    def usable() -> None:
        wire = got.to_json()
        require(OutputEvent.from_json(wire, universe()).to_json() == wire, "the event does not round-trip")
        require(bool(got.datasets) and all(p and not p.startswith("/") for p, _ in got.datasets), "paths")
        require(all(isinstance(run, str) and run for run in got.runs), "a ref without a RUN")

    return well_formed(usable)


_SPEC_STEP = r"""(?:[A-Za-z0-9_-]+|'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|\[\d+\])(?: \([A-Za-z0-9_.-]+\))?"""
_SPEC_LINE = re.compile(rf"^spec: (?:\(top level\)|{_SPEC_STEP}(?:\.?{_SPEC_STEP})*): ")


def check_spec(text: bytes) -> Outcome:
    """``loads_specs``: SpecError (not YAML, or one line per field at fault), or specs that ``dump_specs``
    writes and reads back to the same text, with UTF-8 names for Redis and Prefect."""
    got = attempt(lambda: loads_specs(text, source="spec"), SpecError)
    if isinstance(got, SpecError):
        reason = str(got)
        if not reason.startswith("spec is not valid YAML: "):
            header, *lines = reason.split("\n  ")
            require(header == "invalid autoscaler spec" and bool(lines), f"unexpected reason {reason[:300]!r}")
            for line in lines:
                require_field(line, _SPEC_LINE)
        return "rejected"
    assert isinstance(got, list)

    def usable() -> None:
        dumped = dump_specs(got)
        require(dump_specs(loads_specs(dumped)) == dumped, "the specs do not round-trip through dump_specs")
        for spec in got:
            require(is_text(spec.instrument, spec.deployment, spec.stream, spec.consumer_group), "names not UTF-8")

    return well_formed(usable)


def targets() -> list[Target]:
    """Every parser of the service's inputs, with its cases and its property (the module docstring)."""
    sidecars = document_cases(_sidecar_seeds(), dumps_json, focus=(("GROUPID",), ("CURINDEX",)))
    return [
        Target("next-visit", "admission.admit", "Rejected", document_cases(next_visit_seeds(), dumps_json),
               check_next_visit),
        Target("s3-notification", "router.parse_notification", "BadNotification",
               document_cases(_notification_seeds(), dumps_json), check_notification),
        Target("sidecar", "router.presence_from_sidecar", "BadNotification",
               st.tuples(sidecars, st.sampled_from(raw_keys())), check_sidecar),
        Target("raw-key", "layout.parse_raw_key", "LayoutError", raw_key_cases() | st.text(max_size=40),
               check_raw_key),
        Target("stream-entry", "FanOutEntry.from_fields", "EventError", _stream_entry_cases(), check_stream_entry),
        Target("pp-output", "OutputEvent.from_json", "BadOutputEvent",
               document_cases(output_event_seeds(), dumps_json, OUTPUT_FOCUS), check_output_event),
        Target("autoscaler-spec", "spec.loads_specs", "SpecError",
               document_cases(SPEC_SEEDS, dumps_yaml, raws=RAW_YAML, deep=DEEP_YAML), check_spec),
    ]  # fmt: skip
