"""Butler benchmarks: `make bench` (python -m bench.bench_butler --output BENCHMARKS.md).

Real repositories, no services: the central one on SQLite + local files (the embedded default), the
activator's local one on SQLite; the writer also on the machine's PostgreSQL. Measured in one run:

1. ``preload`` per visit-detector (``LocalRepo.preload``): cold (a fresh activator: calibrations,
   template and refcat shards transferred) and warm (calibrations cached), on a night whose fields are
   each visited twice, with templates and refcat shards not cached (the default) and cached (64).
2. Raw ingest (``ingest_raw``: records + the raw as an ImageV2) and export (``write_outputs`` +
   ``export``: four outputs stored, copied into the central datastore, the event built) per
   visit-detector, 512 x 512 and 2048 x 2048 images, written plain (the default) and tile-compressed
   (lsst-images' own default, lossless GZIP_2).
3. The Butler writer's ingest (``CentralWriter.ingest``, without Kafka) of the same 400 pp-output
   events (1600 datasets) into a fresh registry per configuration, by batch size, on SQLite and on
   PostgreSQL; batch size 1 is one event at a time, the baseline.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import uuid
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
from lsst.daf.butler import Butler, Config
from rich.progress import Progress

from bench.bench_fanout import _replace_section
from pp_devkit.night import raw_header
from pp_devkit.postgres import fresh_database
from pp_devkit.seed import seed_central
from pp_devkit.sim import PlannedVisit, next_visit_message, plan_visits
from pp_devkit.skyfield import raw_scene
from pp_devkit.synth import raw_image
from prompt_processing.butler import repo
from prompt_processing.butler.local import LocalRepo, set_image_compression
from prompt_processing.butler.output_event import OutputEvent
from prompt_processing.butler.writer import CentralWriter
from prompt_processing.model.events import NextVisit
from prompt_processing.model.instruments import LSSTCAM
from prompt_processing.settings import ButlerSettings, S3Settings

DETECTORS = tuple(range(90, 102))  # 12 detectors around the focal-plane centre
N_FIELDS = 6
BATCH_SIZES = (1, 10, 50, 200)


def _central(root: Path, registry_db: str | None = None, datastore_root: Path | None = None) -> Butler:
    settings = ButlerSettings(central_repo=str(root))
    if datastore_root is not None:
        config = Config()
        config["datastore", "root"] = str(datastore_root)
        if registry_db is not None:
            repo.create_btree_gist(registry_db)
            config["registry", "db"] = registry_db
        Butler.makeRepo(str(root), config=config, forceConfigRoot=False)
    return repo.init_central(settings, S3Settings(), registry_db)


def _next_visit(planned: PlannedVisit, seq: int, group: str) -> NextVisit:
    body = next_visit_message(LSSTCAM, planned, now_utc_s=time.time(), lead_s=20, seq_num=seq)
    return NextVisit.from_json(json.dumps(body | {"groupId": group, "nimages": 1}))


def _header(visit: NextVisit, detector: int, seq: int) -> dict[str, Any]:
    return raw_header(LSSTCAM, visit.model_dump(mode="json"), detector, seq)


def _raw(visit: NextVisit, detector: int, size_px: int) -> np.ndarray:
    scene = raw_scene(LSSTCAM, detector, visit.model_dump(mode="json"), (size_px, size_px))
    image, _ = raw_image(instrument="LSSTCam", detector=detector, stars=scene.stars, group_id=visit.groupId,
                         shape_px=(size_px, size_px), n_transients=3, seeing_fwhm_px=scene.seeing_fwhm_px)  # fmt: skip
    return image


def _outputs(image: np.ndarray, rows: int = 50) -> dict[str, Any]:
    table = pa.table({"x_px": np.arange(rows, dtype=float), "y_px": np.arange(rows, dtype=float),
                      "flux_e": np.ones(rows)})  # fmt: skip
    return {repo.VISIT_IMAGE: image, repo.SOURCES: table, repo.DIA_SOURCES: table.slice(0, 5),
            repo.METADATA: {"bench": True}}  # fmt: skip


def bench_preload(work: Path, progress: Progress) -> dict[str, list[float]]:
    """Preload timings: cold / warm, templates cached or not, on a night visiting each field twice."""
    central = _central(work / "central-preload")
    fields = plan_visits(LSSTCAM, N_FIELDS, seed=7)
    seed_central(central, LSSTCAM, DETECTORS, fields, (512, 512))
    reader = repo.open_central(ButlerSettings(central_repo=str(work / "central-preload")), S3Settings())
    out: dict[str, list[float]] = {}
    night = fields + fields  # each field twice, in order
    task = progress.add_task("preload", total=2 * len(night) * len(DETECTORS))
    for label, template_cache in (("templates not cached", 0), ("templates cached (64)", 64)):
        settings = ButlerSettings(central_repo=str(work / "central-preload"), template_cache_entries=template_cache)
        local = LocalRepo(work / f"local-{uuid.uuid4().hex[:6]}", reader, settings.central_repo or "", "LSSTCam",
                          settings)  # fmt: skip
        for i, planned in enumerate(night):
            visit = _next_visit(planned, 1000 + i, f"pre-{label[:3]}-{i}")
            for detector in DETECTORS:
                start = time.perf_counter()
                found = local.preload(visit, detector)
                elapsed = time.perf_counter() - start
                assert not found.missing, found.missing
                kind = "cold" if i == 0 else ("warm, field seen before" if i >= N_FIELDS else "warm, new field")
                out.setdefault(f"{kind}, {label}", []).append(elapsed)
                local.end_visit()
                progress.advance(task)
        local.close()
    return out


def bench_ingest_export(work: Path, progress: Progress) -> dict[str, list[float]]:
    central_root = work / "central-preload"
    reader = repo.open_central(ButlerSettings(central_repo=str(central_root)), S3Settings())
    out: dict[str, list[float]] = {}
    fields = plan_visits(LSSTCAM, N_FIELDS, seed=7)
    cases = ((512, False), (2048, False), (512, True), (2048, True))
    task = progress.add_task("ingest + export", total=len(cases) * N_FIELDS * len(DETECTORS))
    for size_px, compress in cases:
        settings = ButlerSettings(central_repo=str(central_root), compress_images=compress)
        local = LocalRepo(work / f"local-{uuid.uuid4().hex[:6]}", reader, str(central_root), "LSSTCam", settings)
        label = f"{size_px} px" + (", compressed (GZIP_2)" if compress else "")
        for i, planned in enumerate(fields):
            seq = 2000 + size_px + 100 * compress + i
            visit = _next_visit(planned, seq, f"io-{size_px}-{compress:d}-{i}")
            for detector in DETECTORS:
                image = _raw(visit, detector, size_px)
                start = time.perf_counter()
                raw_ref, records = local.ingest_raw(visit, detector, 0, image, _header(visit, detector, seq))
                ingested = time.perf_counter()
                run = repo.output_run("LSSTCam", visit.day_obs(), visit.groupId, "bench")
                refs = local.write_outputs(run, int(raw_ref.dataId["exposure"]), detector, _outputs(image))
                local.export(refs, records, run=run)
                done = time.perf_counter()
                out.setdefault(f"raw ingest, {label}", []).append(ingested - start)
                out.setdefault(f"export, {label}", []).append(done - ingested)
                out.setdefault(f"ingest + export, {label}", []).append(done - start)
                progress.advance(task)
        local.close()
    set_image_compression(False)
    return out


def make_events(work: Path, n_visits: int, n_detectors: int, progress: Progress) -> tuple[Path, list[bytes]]:
    """``n_visits x n_detectors`` pp-output events whose files are in one shared datastore directory."""
    files = work / "writer-files"
    source = _central(work / "central-events")
    local = LocalRepo(work / "local-events", source, str(files), "LSSTCam", ButlerSettings(central_repo=str(files)))
    fields = plan_visits(LSSTCAM, n_visits, seed=11)
    events = []
    task = progress.add_task("making pp-output events", total=n_visits * n_detectors)
    for i, planned in enumerate(fields):
        seq = 5000 + i
        visit = _next_visit(planned, seq, f"w-{i}")
        for detector in range(n_detectors):
            image = np.zeros((64, 64), dtype=np.float32)
            raw_ref, records = local.ingest_raw(visit, detector, 0, image, _header(visit, detector, seq))
            run = repo.output_run("LSSTCam", visit.day_obs(), visit.groupId, "bench")
            refs = local.write_outputs(run, int(raw_ref.dataId["exposure"]), detector, _outputs(image, 20))
            events.append(local.export(refs, records, run=run).to_json())
            progress.advance(task)
    return files, events


def bench_writer(work: Path, files: Path, events: list[bytes], progress: Progress) -> dict[str, float]:
    """Datasets per second, per (backend, batch size), each into a fresh registry."""
    out: dict[str, float] = {}
    task = progress.add_task("writer", total=2 * len(BATCH_SIZES))
    for backend in ("SQLite", "PostgreSQL"):
        for batch in BATCH_SIZES:
            root = work / f"writer-{backend}-{batch}"
            with fresh_database("pp_bench") if backend == "PostgreSQL" else nullcontext() as db:
                central = _central(root, db, datastore_root=files)
                writer = CentralWriter(central)
                start = time.perf_counter()
                datasets = 0
                for at in range(0, len(events), batch):
                    parsed = [OutputEvent.from_json(e, central.dimensions) for e in events[at:at + batch]]
                    report = writer.ingest(parsed)
                    assert not report.rejected, report.rejected
                    datasets += report.datasets
                out[f"{backend}, batch {batch}"] = datasets / (time.perf_counter() - start)
            progress.advance(task)
    return out


def _row(name: str, values: list[float]) -> str:
    p50, p95 = np.percentile(values, [50, 95])
    return f"| {name} | {len(values)} | {p50 * 1e3:.0f} ms | {p95 * 1e3:.0f} ms | {max(values) * 1e3:.0f} ms |"


def render(preload: dict[str, list[float]], io: dict[str, list[float]], writer: dict[str, float], plot: str,
           n_events: int) -> str:  # fmt: skip
    lines = [
        "## Butler data layer (issue 10)",
        "",
        "Command: `make bench` (`python -m bench.bench_butler --output BENCHMARKS.md`), run "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} (2 cores, Python {platform.python_version()}). "
        "Central repository: SQLite registry + local files; local repository: SQLite + local files; LSSTCam, "
        f"{len(DETECTORS)} detectors, 512 x 512 calibrations and templates.",
        "",
        "| per visit-detector | n | p50 | p95 | max |",
        "|---|---:|---:|---:|---:|",
        *(_row(f"preload, {name}", values) for name, values in preload.items()),
        *(_row(name, values) for name, values in io.items()),
        "",
        f"Butler writer, `CentralWriter.ingest` of the same {n_events} pp-output events ({4 * n_events} datasets, "
        "7 dimension records each, files already in the datastore) into a fresh registry per row; batch 1 is "
        "one event at a time (the baseline):",
        "",
        "| registry, batch size | datasets/s | vs batch 1 |",
        "|---|---:|---:|",
    ]
    for name, rate in writer.items():
        backend = name.split(",")[0]
        lines.append(f"| {name} | {rate:.0f} | {rate / writer[f'{backend}, batch 1']:.1f}x |")
    lines += [
        "",
        "Targets: warm preload p50 <= 300 ms; ingest + export p50 <= 300 ms; writer >= 500 datasets/s on PostgreSQL.",
        f"Plot: `{plot}`.",
        "",
    ]
    return "\n".join(lines)


def _plot(writer: dict[str, float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for backend in ("SQLite", "PostgreSQL"):
        rates = [writer[f"{backend}, batch {b}"] for b in BATCH_SIZES]
        ax.plot(BATCH_SIZES, rates, marker="o", label=backend)
    ax.axhline(500, color="grey", linestyle="--", label="target (PostgreSQL)")
    ax.set(xscale="log", xlabel="events per batch", ylabel="datasets ingested per second",
           title="Butler writer throughput by batch size")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--events", type=int, default=400, help="pp-output events for the writer (20 per visit)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pp-bench-butler-") as tmp, Progress() as progress:
        work = Path(tmp)
        preload = bench_preload(work, progress)
        io = bench_ingest_export(work, progress)
        files, events = make_events(work, max(args.events // 20, 1), 20, progress)
        writer = bench_writer(work, files, events, progress)
    plot = Path("bench/results/butler-writer.png")
    plot.parent.mkdir(parents=True, exist_ok=True)
    _plot(writer, plot)
    section = render(preload, io, writer, str(plot), len(events))
    _replace_section(args.output, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
