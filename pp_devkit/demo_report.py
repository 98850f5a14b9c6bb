"""The demo's closing report: what happened to every visit-detector of the night."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import redis
from rich.console import Console
from rich.table import Table

from prompt_processing.adapters import kafka, s3
from prompt_processing.adapters.health import read_health
from prompt_processing.adapters.results import landed_to_alerts_s, read_results
from prompt_processing.alerts.packet import load_schema
from prompt_processing.butler import repo
from prompt_processing.imaging.catalogue import Catalogue, match_to_truth
from prompt_processing.model import layout, naming
from prompt_processing.settings import Settings


@dataclass
class NightReport:
    """Outcomes of the night's visit-detectors, and how well transients were recovered."""

    expected: int
    results: list[dict[str, str]]
    latencies_s: list[float] = field(default_factory=list)
    injected: int = 0
    recovered: int = 0
    spurious: int = 0
    alerts: int = 0
    dead_letter_entries: int = 0
    fanout: dict[str, Any] = field(default_factory=dict)
    router: dict[str, Any] = field(default_factory=dict)
    butler_writer: dict[str, Any] = field(default_factory=dict)
    central_repo: str = ""
    output_collection: str = ""
    central_outputs: int = 0  # output datasets of the night's visits found in the central repository

    @property
    def complete(self) -> bool:
        return len(self.results) == self.expected and all(r["status"] == "succeeded" for r in self.results)

    @classmethod
    def collect(cls, settings: Settings, client: redis.Redis, groups: list[str], expected: int) -> NightReport:
        wanted = set(groups)
        results = read_results(client, "LSSTCam")
        report = cls(expected=expected, results=[r for r in results if r["group"] in wanted])
        report.latencies_s = [landed_to_alerts_s(r) for r in report.results if r["status"] == "succeeded"]
        report.dead_letter_entries = client.xlen(naming.dead_letter_stream("LSSTCam"))
        host = socket.gethostname()
        report.fanout = read_health(client, "fanout", settings.fanout.consumer_name or host) or {}
        report.router = read_health(client, "router", settings.router.consumer_name or host) or {}
        report.butler_writer = read_health(client, "butler-writer", settings.butler.writer_name or host) or {}
        report._score_transients(settings, wanted)
        report._count_central_outputs(settings, wanted)
        return report

    def _count_central_outputs(self, settings: Settings, groups: set[str]) -> None:
        """The night's outputs as the central Butler lists them (the count ``butler query-datasets`` gives)."""
        central = repo.open_central(settings.butler, settings.s3)
        nights = {r["day_obs"] for r in self.results if r.get("day_obs")}
        self.central_repo = repo.central_uri(settings.butler)
        self.output_collection = ", ".join(repo.output_glob("LSSTCam", night) for night in sorted(nights))
        for night in nights:
            for name in repo.OUTPUT_TYPES:
                refs = central.query_datasets(name, collections=repo.output_glob("LSSTCam", night), find_first=False,
                                              explain=False)  # fmt: skip
                self.central_outputs += sum(repo.output_run_group(ref.run) in groups for ref in refs)

    def _score_transients(self, settings: Settings, groups: set[str]) -> None:
        """Alerts decoded with the schema they were framed for, matched to the simulator's truth by position."""
        schema = load_schema(settings.alerts.schema_version)
        alerts: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for record in kafka.read_records(settings.kafka, settings.kafka.alerts_topic):
            group = record.headers.get("group", b"").decode()
            if group in groups:
                source = schema.decode(record.value)["diaSource"]
                alerts.setdefault((group, int(source["detector"])), []).append(source)
        self.alerts = sum(len(v) for v in alerts.values())
        client = s3.make_client(settings.s3)
        try:
            for r in self.results:
                if r["status"] != "succeeded":
                    continue
                key = layout.truth_key("LSSTCam", r["group"], int(r["detector"]))
                truth = [
                    SimpleNamespace(**t) for t in json.loads(s3.get_bytes(client, settings.s3.truth_bucket, key))
                ]
                detected = _positions(alerts.get((r["group"], int(r["detector"])), []))
                found, _missed, spurious = match_to_truth(detected, truth)
                self.injected += len(truth)
                self.recovered += found
                self.spurious += spurious
        finally:
            client.close()


def _positions(sources: list[dict[str, Any]]) -> Catalogue:
    """The alerts' diaSource pixel positions as a catalogue (what ``match_to_truth`` compares)."""
    if not sources:
        return Catalogue.empty()
    x_px, y_px = (np.array([s[name] for s in sources], dtype=np.float64) for name in ("x", "y"))
    flux = np.array([s["psfFlux"] for s in sources], dtype=np.float64)
    return Catalogue(x_px, y_px, flux, np.ones_like(flux), np.zeros_like(flux), np.zeros(len(sources), np.int64))


def print_report(console: Console, settings: Settings, report: NightReport, logs: Path) -> None:
    statuses: dict[str, int] = {}
    for r in report.results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    table = Table(title="Simulated night: LSSTCam visit-detectors", show_header=False)
    table.add_row("visit-detectors expected / with an outcome", f"{report.expected} / {len(report.results)}")
    table.add_row("outcomes", ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) or "none")
    lat = report.latencies_s
    if lat:
        p50, p95 = np.percentile(lat, [50, 95])
        table.add_row("image landed -> alerts sent, p50 / p95 / max", f"{p50:.2f} s / {p95:.2f} s / {max(lat):.2f} s")
    table.add_row("transients injected / recovered (within 2 px)", f"{report.injected} / {report.recovered}")
    table.add_row("alerts sent / not matching an injected transient", f"{report.alerts} / {report.spurious}")
    for r in report.results:
        if r["status"] == "failed":
            table.add_row(f"[red]failed {r['group']} det{int(r['detector']):03d}[/]", r.get("reason", "")[:100])
    table.add_row("work entries dead-lettered", str(report.dead_letter_entries))
    fan = report.fanout
    if fan:
        table.add_row("next-visit fan-out: fanned out / de-duplicated / dead-lettered",
                      f"{fan['fanned_out']} / {fan['duplicates']} / {sum(fan['dead_lettered'].values())} "
                      f"({', '.join(sorted(fan['dead_lettered']))})")  # fmt: skip
        if fan.get("latency_ms_p50") is not None:
            table.add_row(
                "fan-out latency p50 / p99", f"{fan['latency_ms_p50']:.2f} ms / {fan['latency_ms_p99']:.2f} ms"
            )
    if report.router:
        table.add_row("raw images routed", f"{report.router.get('presences', 0)} presences")
    writer = report.butler_writer
    succeeded = sum(r["status"] == "succeeded" for r in report.results)
    table.add_row("Butler writer: events / datasets ingested / dead-lettered",
                  f"{writer.get('events', 0)} / {writer.get('datasets', 0)} / "
                  f"{sum(v for k, v in writer.items() if k.startswith('dead_lettered'))}")  # fmt: skip
    per_visit = len(repo.OUTPUT_TYPES)
    table.add_row(f"outputs in the central Butler ({per_visit} per succeeded visit-detector)",
                  f"{report.central_outputs} ({per_visit * succeeded} expected)")  # fmt: skip
    table.add_row("Prefect UI", settings.prefect.ui)
    table.add_row("service logs", str(logs))
    console.print(table)
    console.print(f"central Butler: {report.central_repo}", highlight=False, soft_wrap=True)
    console.print(f"output collection: {report.output_collection or 'none (nothing succeeded)'}", highlight=False,
                  soft_wrap=True)  # fmt: skip
