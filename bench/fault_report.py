"""The measures and the report of ``make faults`` (``bench.faults``): each repeat's night measured, the
``## Fault injection`` section of ``RELIABILITY.md`` and a timeline PNG per fault.

What it holds: :class:`RepeatResult` (one night with one fault, measured) and :class:`Row` (a fault's line
of the table); :func:`measure`, which reads the night from the :class:`~bench.fault_injection.Recorder`'s
copy of the work, results and dead-letter streams and from the alerts topic; the pure measures
(:func:`processed_twice`, :func:`recovery_s`, :func:`stall_s`); the line printed per repeat
(:func:`summarise`); the section (:func:`render_section`, written by :func:`replace_section`) and the
timelines (:func:`plot_fault`).

The definitions it measures, per night:

* lost: visit-detectors planned that have no outcome record (entries in ``instrument:<name>:dead-letter``
  are counted apart);
* processed twice: visit-detectors with more than one ``succeeded`` / ``failed`` record, not counting
  records whose reason starts with "already done" or "already failed" (the ledger recognised a redelivery:
  nothing was processed again);
* duplicate alerts: alerts of the night's visits on the alerts topic less their unique keys;
* recovery: fault end -> next outcome of the night recorded (an activator kill: -> the entry it held taken
  by another activator, its processing resumed (the notes give kill -> that visit-detector's outcome); a
  fan-out kill: restart -> next visit fanned out; a Butler writer kill: restart -> its committed offset at
  the topic's end), and the longest stall between outcome records around it.
"""

from __future__ import annotations

import itertools
import os
import platform
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import KafkaException

from bench.fault_injection import Injected, Recorder, VisitDetector
from prompt_processing.adapters import kafka
from prompt_processing.reporting.outcomes import Outcome
from prompt_processing.settings import Settings

SECTION = "## Fault injection"
STATUSES = {"succeeded": "tab:green", "already done": "tab:blue", "failed": "tab:red", "ignored": "tab:orange"}
"""Outcome records by kind ("already done": a redelivered visit-detector recorded as done or as failed before, not
processed again), and their colour in the timelines."""
RECOGNISED = ("already done", "already failed")
"""How the reason of a redelivered visit-detector's record starts when the ledger recognised it."""


# --------------------------------------------------------------------------- measures


@dataclass(frozen=True)
class RepeatResult:
    """One night with one fault, measured. ``timeline``: (recorded at, status) of the night's outcome records."""

    fault: str
    repeat: int
    began: float
    injected: Injected
    planned: list[VisitDetector]
    lost: list[VisitDetector]
    twice: list[VisitDetector]
    alerts: int
    unique_alerts: int
    dead_lettered: list[VisitDetector]
    recovery_s: float | None
    stall_s: float | None
    timeline: list[tuple[float, str]]
    failures: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def duplicate_alerts(self) -> int:
        return self.alerts - self.unique_alerts

    def statuses(self) -> Counter[str]:
        return Counter(status for _, status in self.timeline)


@dataclass(frozen=True)
class Row:
    """A fault's line of the table: its repeats, or why it does not apply here."""

    fault_name: str
    title: str
    results: list[RepeatResult]
    not_applicable: str | None


def measure(
    settings: Settings, recorder: Recorder, fault: str, repeat: int, began: float, groups: list[str],
    detectors: tuple[int, ...], injected: Injected,
) -> RepeatResult:  # fmt: skip
    """The night of ``groups`` x ``detectors`` as the results streams and the alerts topic tell it."""
    wanted = set(groups)
    outcomes = [o for o in recorder.outcomes() if o.group in wanted]
    planned = [(g, d) for g in groups for d in detectors]
    recorded = {(o.group, o.detector) for o in outcomes}
    dead = [vd for vd in recorder.dead_letters() if vd[0] in wanted]
    alerts, unique = _alerts(settings, wanted, began)
    held = sorted(o.recorded_at for o in outcomes if injected.hit is not None and (o.group, o.detector) == injected.hit)
    notes = [f"its visit-detector's outcome {held[0] - injected.start:.0f} s after the kill"] if held else []
    return RepeatResult(
        fault=fault, repeat=repeat, began=began, injected=injected, planned=planned,
        lost=[vd for vd in planned if vd not in recorded], twice=processed_twice(outcomes), alerts=alerts,
        unique_alerts=unique, dead_lettered=dead, recovery_s=recovery_s(injected, outcomes, len(planned)),
        stall_s=stall_s([o.recorded_at for o in outcomes], injected.start),
        timeline=[(o.recorded_at, _kind(o)) for o in outcomes],
        failures=[_failure(o) for o in outcomes if o.status == "failed"], notes=notes,
    )  # fmt: skip


def _failure(outcome: Outcome, limit: int = 90) -> str:
    """A failure's innermost error and message (``...: CalibrationError: too few stars``), shortened."""
    found = list(re.finditer(r"\b\w+(Error|Exception|Timeout): ", outcome.reason))
    text = outcome.reason[found[-1].start() :] if found else outcome.reason or outcome.error
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(outcome: Outcome) -> str:
    return "already done" if outcome.reason.startswith(RECOGNISED) else outcome.status


def processed_twice(outcomes: list[Outcome]) -> list[VisitDetector]:
    """Visit-detectors with more than one succeeded/failed record (records of "already done" or "already failed"
    not counted: the ledger recognised them, nothing was processed)."""
    counts = Counter((o.group, o.detector) for o in outcomes
                     if o.status in ("succeeded", "failed") and not o.reason.startswith(RECOGNISED))  # fmt: skip
    return sorted(vd for vd, n in counts.items() if n > 1)


def recovery_s(injected: Injected, outcomes: list[Outcome], planned: int) -> float | None:
    """Fault end -> next outcome recorded (0 if every one of the ``planned`` visit-detectors was done by then);
    for a fault that measured its own recovery (a killed activator's entry taken by another, the fan-out, the
    Butler writer), that; for a killed activator that did not, -> the outcome of what it held. None if it never
    happened."""
    if injected.recovered_at is not None:
        return injected.recovered_at - injected.end
    if injected.hit is not None:
        held = [o.recorded_at for o in outcomes if (o.group, o.detector) == injected.hit]
        return max(0.0, min(held) - injected.start) if held else None
    after = [o.recorded_at for o in outcomes if o.recorded_at >= injected.end]
    if after:
        return min(after) - injected.end
    return 0.0 if outcomes and len({(o.group, o.detector) for o in outcomes}) == planned else None


def stall_s(recorded_at: list[float], since: float) -> float | None:
    """The longest gap between consecutive outcome records from the last one before ``since`` (if any) on."""
    before = [t for t in recorded_at if t < since]
    times = sorted([max(before)] if before else []) + sorted(t for t in recorded_at if t >= since)
    return max((b - a for a, b in itertools.pairwise(times)), default=None)


def _alerts(settings: Settings, groups: set[str], since: float) -> tuple[int, int]:
    """(alerts of ``groups`` on the alerts topic, their unique keys); (-1, -1) if the topic cannot be read."""
    k = settings.kafka
    try:
        records = kafka.read_records(k, k.alerts_topic, since_utc=since - 60, timeout_s=20)
    except (TimeoutError, KafkaException) as exc:
        print(f"alerts topic not read: {exc}")
        return -1, -1
    keys = [r.key for r in records if r.headers.get("group", b"").decode() in groups]
    return len(keys), len(set(keys))


def summarise(result: RepeatResult) -> str:
    """One line per repeat, printed as the run goes."""
    recovery = "never" if result.recovery_s is None else f"{result.recovery_s:.1f} s"
    line = (f"{result.fault} #{result.repeat}: {len(result.planned)} planned, {len(result.lost)} lost, "
            f"{len(result.twice)} twice, {result.duplicate_alerts} duplicate alerts, recovery {recovery}; "
            f"{result.injected.note}")  # fmt: skip
    failures = Counter(result.failures).most_common(2)
    return line + "".join(f"; {note}" for note in result.notes) + "".join(f"; failed: {r} ({n})" for r, n in failures)


# --------------------------------------------------------------------------- the report


def render_section(rows: list[Row], plots: dict[str, Path], meta: dict[str, str]) -> str:
    """The ``## Fault injection`` section: how it was run, the table, the timelines, the evidence."""
    lines = [
        SECTION, "",
        f"Command: `{meta['command']}`, run {meta['when']} on {meta['host']}; seed {meta['seed']}; "
        f"wall time {meta['wall']}.", "",
        f"Each repeat is one night of {meta['night']}. One fault per night, at a random moment of its processing "
        "(once 1 to 75 % of its visit-detectors are done; the fan-out's: while its visits are announced). The "
        "nights run back to back, overlapped (the next one is announced while the previous one is processed; "
        "its fault waits until the previous one is measured). The stack is the fault run's own (`.pp/faults`, "
        f"free ports): Redis, Tansu (storage `{meta['kafka']}`), moto S3, the Prefect server on SQLite, with the "
        "demo's services (fan-out, router, Butler writer, Prefect worker, autoscaler eager min 1 / max one per "
        f"detector, reporter); `claim_idle_s` {meta['claim_idle_s']} s. Load average during the run: "
        f"{meta['load']}.", "",
        "Lost: visit-detectors planned without an outcome record (the dead-lettered are in the notes). "
        "Processed twice: more than one succeeded/failed record for a visit-detector (records of redeliveries the "
        "ledger recognised, \"already done\" or \"already failed\", not counted). "
        "Duplicate alerts: the night's alerts on the alerts topic less their unique keys. "
        "Recovery: fault end -> next outcome of the night recorded (an activator kill: -> the entry it held taken "
        "by another activator, its processing resumed; the notes give kill -> that visit-detector's outcome; a "
        "fan-out kill: restart -> next visit fanned out; a Butler writer kill: restart -> "
        "its committed offset at the topic's end); the notes give the longest stall between the night's outcome "
        "records from the fault on.", "",
        "| fault | repeats | visit-detectors planned | lost | processed twice | duplicate alerts "
        "| recovery median / max | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *(_table_row(row) for row in rows), "",
    ]  # fmt: skip
    if plots:
        links = ", ".join(f"[{name}]({path})" for name, path in plots.items())
        lines += [f"Timelines (outcome records over time per repeat, the fault shaded): {links}.", ""]
    evidence = [line for row in rows for result in row.results if (line := _evidence(result))]
    if evidence:
        lines += ["Losses and duplicates (services' logs: `.pp/faults/logs/`):", "", *evidence, ""]
    return "\n".join(lines)


def _table_row(row: Row) -> str:
    if row.not_applicable is not None:
        return f"| {row.title} | 0 | - | - | - | - | - | {row.not_applicable} |"
    results = row.results
    lost, twice = sum(len(r.lost) for r in results), sum(len(r.twice) for r in results)
    duplicates = sum(r.duplicate_alerts for r in results) if all(r.alerts >= 0 for r in results) else "?"
    cells = [row.title, str(len(results)), str(sum(len(r.planned) for r in results)), _bold(lost), _bold(twice),
             _bold(duplicates), _recovery_cell(row), _notes(results)]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def _bold(value: int | str) -> str:
    return str(value) if value == 0 else f"**{value}**"


def _recovery_cell(row: Row) -> str:
    if row.fault_name == "baseline":
        return "-"
    times = [r.recovery_s for r in row.results if r.recovery_s is not None]
    never = len(row.results) - len(times)
    cell = f"{statistics.median(times):.1f} / {max(times):.1f} s" if times else "never"
    return cell + (f" ({never} never)" if never and times else "")


def _notes(results: list[RepeatResult]) -> str:
    statuses = sum((r.statuses() for r in results), Counter[str]())
    parts = [", ".join(f"{statuses[s]} {s}" for s in STATUSES if statuses[s])]
    reasons = Counter(o for r in results for o in r.failures)
    parts += [f"failed: {reason} ({n})" for reason, n in reasons.most_common(2)]
    if dead := sum(len(r.dead_lettered) for r in results):
        parts.append(f"**{dead} dead-lettered**")
    stalls = [r.stall_s for r in results if r.stall_s is not None]
    if stalls:
        parts.append(f"longest stall {max(stalls):.0f} s")
    fault_notes = Counter(_one_line(r.injected.note) for r in results) + Counter(
        _one_line(n) for r in results for n in r.notes)  # fmt: skip
    parts += [note if n == 1 else f"{note} (x{n})" for note, n in fault_notes.items()]
    return "; ".join(p for p in parts if p).replace("|", "/")


def _one_line(note: str, limit: int = 160) -> str:
    line = note.strip().splitlines()[0] if note.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _evidence(result: RepeatResult) -> str:
    """A line naming what was lost, processed twice or alerted twice in a repeat, if anything."""
    found = [(what, vds) for what, vds in (("lost", result.lost), ("processed twice", result.twice),
                                           ("dead-lettered", result.dead_lettered)) if vds]  # fmt: skip
    if not found and result.duplicate_alerts <= 0:
        return ""
    when = datetime.fromtimestamp(result.injected.start, UTC).strftime("%H:%M:%S")
    parts = [f"{what} {len(vds)}: {_names(vds)}" for what, vds in found]
    if result.duplicate_alerts > 0:
        parts.append(f"{result.duplicate_alerts} duplicate alerts ({result.alerts} on the topic, "
                     f"{result.unique_alerts} unique)")  # fmt: skip
    head = f"- {result.fault} #{result.repeat} (fault at {when} UTC, {_one_line(result.injected.note)}): "
    return head + "; ".join(parts)


def _names(vds: list[VisitDetector], shown: int = 6) -> str:
    names = [f"{group} det{detector:03d}" for group, detector in vds[:shown]]
    return ", ".join(names) + (f" and {len(vds) - shown} more" if len(vds) > shown else "")


def replace_section(path: Path, section: str) -> None:
    """Write ``section`` into ``path`` (``# Reliability`` if new), replacing only its own earlier version."""
    text = path.read_text() if path.exists() else "# Reliability\n"
    if SECTION in text:
        start = text.index(SECTION)
        following = text.find("\n## ", start + len(SECTION))
        end = len(text) if following < 0 else following + 1
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" if following >= 0 else "") + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    path.write_text(text)


def plot_fault(row: Row, directory: Path) -> Path:
    """One PNG per fault: per repeat, each status's outcome records over time, the fault window shaded."""
    import matplotlib  # noqa: PLC0415 - the report extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    results = row.results
    figure, axes = plt.subplots(len(results), 1, figsize=(9, 2.4 * len(results)), squeeze=False)
    for axis, result in zip(axes[:, 0], results, strict=True):
        for status, color in STATUSES.items():
            times = sorted(t - result.began for t, s in result.timeline if s == status)
            if times:
                axis.step([0.0, *times], range(len(times) + 1), where="post", color=color, label=status)
        start, end = result.injected.start - result.began, result.injected.end - result.began
        axis.axvspan(start, max(end, start + 0.5), color="tab:red", alpha=0.25, label="fault")
        axis.axhline(len(result.planned), color="grey", linestyle=":", linewidth=1, label="planned")
        axis.set_title(f"#{result.repeat}: {len(result.lost)} lost, {len(result.twice)} twice, "
                       f"{max(result.duplicate_alerts, 0)} duplicate alerts", fontsize=9)  # fmt: skip
        axis.set_ylabel("outcome records")
        axis.legend(loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("seconds since the night began")
    figure.suptitle(row.title, fontsize=10)
    figure.tight_layout()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"faults-{row.fault_name}.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def minutes(seconds: float) -> str:
    """``seconds`` as ``<m> min <s> s`` (the run's wall time)."""
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def host() -> str:
    """This machine: its name, cores and Python version."""
    return f"{platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()})"
