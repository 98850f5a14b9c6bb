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
from pp_devkit.seed import seed_central
from pp_devkit.sim import PlannedVisit, next_visit_message, plan_visits
from pp_devkit.skyfield import raw_scene
from pp_devkit.synth import raw_image
from prompt_processing.butler import repo
from prompt_processing.butler.local import LocalRepo
from prompt_processing.butler.output_event import OutputEvent
from prompt_processing.imaging.algorithms import background, detect_sources, isr
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

    def raw(self, detector: int, shape_px: tuple[int, int] = SHAPE_PX,
            **header_changes: object) -> tuple[np.ndarray, dict[str, object]]:  # fmt: skip
        """The detector's raw (the simulator's sky through the visit's true WCS) and the header the camera
        would write (with the WCS it believes)."""
        body = self.next_visit.model_dump(mode="json")
        scene = raw_scene(self.instrument, detector, body, shape_px)
        image, _ = raw_image(instrument=self.instrument.name, detector=detector, stars=scene.stars,
                             group_id=self.next_visit.groupId, shape_px=shape_px, n_transients=3,
                             seeing_fwhm_px=scene.seeing_fwhm_px)  # fmt: skip
        header = raw_header(self.instrument, body, detector, self.seq_num, shape_px=shape_px)
        return image, header | header_changes


def seed(butler: Butler, visit: Visit, detectors: tuple[int, ...], *, holes: tuple[int, ...] = (),
         shape_px: tuple[int, int] = SHAPE_PX) -> None:  # fmt: skip
    plan = NightPlan(visit.instrument, detectors, 1, 1.0, 20.0, 30.0, shape_px, 3)
    seed_central(butler, plan.instrument, plan.detectors, [visit.planned], shape_px, holes=holes)


def local_repo(tmp: Path, settings: ButlerSettings, central: Butler, instrument: str) -> LocalRepo:
    return LocalRepo(tmp / f"local-{uuid.uuid4().hex[:6]}", central, repo.central_uri(settings), instrument, settings)


def export_visit_detector(local: LocalRepo, visit: Visit, detector: int, attempt: str = "a1") -> OutputEvent:
    """Preload, ingest the raw, write outputs (the raw after ISR and the sources of its background-subtracted
    image) and export them: the Butler side of what an activator does, without the pipeline."""
    found = local.preload(visit.next_visit, detector)
    assert found.bias and found.flat and found.templates, found.missing
    image, header = visit.raw(detector)
    raw_ref, records = local.ingest_raw(visit.next_visit, detector, 0, image, header)
    bias, flat = local.read(found.bias).array, local.read(found.flat).array
    calexp, rms_e = background(isr(local.read(raw_ref).array, bias, flat))
    v = visit.next_visit
    run = repo.output_run(v.instrument, v.day_obs(), v.groupId, attempt)
    sources = catalogue_to_arrow(detect_sources(calexp, rms_e))
    outputs = {repo.VISIT_IMAGE: calexp, repo.SOURCES: sources, repo.DIA_SOURCES: sources.slice(0, 0),
               repo.METADATA: {"attempt": attempt}}  # fmt: skip
    refs = local.write_outputs(run, int(raw_ref.dataId["exposure"]), detector, outputs)
    return local.export(refs, records, instrument=v.instrument, group=v.groupId, detector=detector, run=run)


def count_outputs(butler: Butler, instrument: str, night: str) -> int:
    return sum(len(butler.query_datasets(name, collections=repo.output_glob(instrument, night), find_first=False,
                                         explain=False)) for name in repo.OUTPUT_TYPES)  # fmt: skip
