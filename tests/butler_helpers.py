"""Real repositories for the Butler tests: a SQLite central repo in a temporary directory, or a
PostgreSQL registry (a fresh database, dropped afterwards) with an S3 datastore on the session's
moto server; and one visit-detector taken through a local repository up to its export."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lsst.daf.butler import Butler

from pp_devkit.night import NightPlan, raw_header
from pp_devkit.seed import seed_central, star_tile_at
from pp_devkit.sim import PlannedVisit, next_visit_message, plan_visits
from pp_devkit.synth import raw_image
from prompt_processing.butler import repo
from prompt_processing.butler.local import LocalRepo
from prompt_processing.butler.output_event import OutputEvent
from prompt_processing.imaging.algorithms import process_detector
from prompt_processing.imaging.catalogue import catalogue_to_arrow
from prompt_processing.model.events import NextVisit
from prompt_processing.model.instruments import Instrument
from prompt_processing.settings import ButlerSettings, Settings

SHAPE_PX = (128, 128)


def with_central(settings: Settings, central_repo: str) -> Settings:
    return settings.model_copy(update={"butler": settings.butler.model_copy(update={"central_repo": central_repo})})


@dataclass
class Visit:
    """One simulated visit of ``instrument``: its plan and its NextVisit."""

    instrument: Instrument
    planned: PlannedVisit
    next_visit: NextVisit
    seq_num: int

    @classmethod
    def make(cls, instrument: Instrument, index: int = 0, group: str | None = None) -> Visit:
        planned = plan_visits(instrument, index + 1)[index]
        seq = int(time.time() * 1000) % 900_000 + index
        body = next_visit_message(instrument, planned, now_utc_s=time.time(), lead_s=20, seq_num=seq)
        body |= {"nimages": 1, "duration": 30.0} | ({"groupId": group} if group else {})
        return cls(instrument, planned, NextVisit.from_json(json.dumps(body)), seq)

    def raw(self, detector: int, **header_changes: object) -> tuple[np.ndarray, dict[str, object]]:
        """The detector's raw (the simulator's image) and the header the camera would write."""
        v = self.next_visit
        tile = star_tile_at(self.instrument, detector, v.position[0], v.position[1], v.cameraAngle)
        image, _ = raw_image(instrument=self.instrument.name, detector=detector, tile=tile, group_id=v.groupId,
                             shape_px=SHAPE_PX, n_transients=3)  # fmt: skip
        header = raw_header(self.instrument, v.model_dump(mode="json"), detector, self.seq_num)
        return image, header | header_changes


def seed(butler: Butler, visit: Visit, detectors: tuple[int, ...], *, holes: tuple[int, ...] = ()) -> None:
    plan = NightPlan(visit.instrument, detectors, 1, 1.0, 20.0, 30.0, SHAPE_PX, 3)
    seed_central(butler, plan.instrument, plan.detectors, [visit.planned], SHAPE_PX, holes=holes)


def local_repo(tmp: Path, settings: ButlerSettings, central: Butler, instrument: str) -> LocalRepo:
    return LocalRepo(tmp / f"local-{uuid.uuid4().hex[:6]}", central, repo.central_uri(settings), instrument, settings)


def export_visit_detector(local: LocalRepo, visit: Visit, detector: int, attempt: str = "a1") -> OutputEvent:
    """Preload, ingest the raw, process, write the outputs and export them: what an activator does."""
    found = local.preload(visit.next_visit, detector)
    assert found.bias and found.flat and found.template, found.missing
    image, header = visit.raw(detector)
    raw_ref, records = local.ingest_raw(visit.next_visit, detector, 0, image, header)
    bias, flat, template = (local.read(ref).array for ref in (found.bias, found.flat, found.template))
    result = process_detector(local.read(raw_ref).array, bias, flat, template)
    v = visit.next_visit
    run = repo.output_run(v.instrument, v.day_obs(), v.groupId, attempt)
    outputs = {repo.VISIT_IMAGE: result.calexp, repo.SOURCES: catalogue_to_arrow(result.sources),
               repo.DIA_SOURCES: catalogue_to_arrow(result.dia_sources),
               repo.METADATA: {"attempt": attempt}}  # fmt: skip
    refs = local.write_outputs(run, int(raw_ref.dataId["exposure"]), detector, outputs)
    return local.export(refs, records, instrument=v.instrument, group=v.groupId, detector=detector, run=run)


def count_outputs(butler: Butler, instrument: str, night: str) -> int:
    return sum(len(butler.query_datasets(name, collections=repo.output_glob(instrument, night), find_first=False,
                                         explain=False)) for name in repo.OUTPUT_TYPES)  # fmt: skip
