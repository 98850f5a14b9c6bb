"""The simulator's central repository: bias and flat certified per detector, templates and reference
catalogue shards on HTM level 7 where the night will look, all through the Butler.

Idempotent: what the repository already has (same data id) is kept, so a night seeds only what is new.
Templates follow the synthetic images' one simplification (no WCS): a template is the deep image of
the star field of (HTM7 trixel of the detector's centre, detector) on that detector's pixel grid, and
the raws of any visit whose detector centre falls in that trixel show the same stars at the same pixels.
``holes`` leaves the templates of some visits out, as a real survey has places without one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import astropy.time
import numpy as np
from astropy.table import Table
from lsst.daf.butler import Butler, DatasetRef, Timespan
from lsst.images import Image
from lsst.sphgeom import HtmPixelization, LonLat, UnitVector3d

from pp_devkit.sim import PlannedVisit
from pp_devkit.synth import bias_frame, flat_frame, seed_for, template_image
from prompt_processing.butler import repo
from prompt_processing.model import sky
from prompt_processing.model.instruments import Instrument

CALIB_LABEL = "sim"
CALIB_VALID_FROM = astropy.time.Time("2020-01-01T00:00:00", scale="tai")
REFCAT_STARS_PER_SHARD = 200


@dataclass(frozen=True)
class SeedReport:
    calibs: int
    templates: int
    refcats: int


def star_tile(trixel: int) -> str:
    """The synthetic star field's name for a trixel (``synth.star_field``'s ``tile``)."""
    return f"htm7-{trixel}"


def template_trixel(instrument: Instrument, detector: int, visit: PlannedVisit) -> int:
    """The trixel whose template a visit's detector is compared with: the one holding its centre."""
    centre = sky.detector_centre(instrument, detector, visit.ra_deg, visit.dec_deg, visit.camera_angle_deg)
    return sky.htm_index(*centre)


def star_tile_at(instrument: Instrument, detector: int, ra_deg: float, dec_deg: float, camera_angle_deg: float) -> str:
    """The star field a raw of ``detector`` shows at this pointing: its template's (``template_trixel``)."""
    return star_tile(sky.htm_index(*sky.detector_centre(instrument, detector, ra_deg, dec_deg, camera_angle_deg)))


def seed_central(
    butler: Butler, instrument: Instrument, detectors: Iterable[int], visits: list[PlannedVisit],
    shape_px: tuple[int, int], *, holes: Iterable[int] = (),
) -> SeedReport:  # fmt: skip
    """Seed calibrations for ``detectors`` (flats for the visits' filters), templates for every
    (trixel, detector) the visits look at except those of visit indices in ``holes``, and the refcat
    shards their regions overlap. Returns what was added."""
    detectors = tuple(detectors)
    name = instrument.name
    calibs = _seed_calibs(butler, instrument, detectors, sorted({v.filters for v in visits}), shape_px)
    skip = set(holes)
    wanted = {(template_trixel(instrument, d, v), d) for i, v in enumerate(visits) if i not in skip for d in detectors}
    have = {(ref.dataId["htm7"], ref.dataId["detector"])
            for ref in butler.query_datasets(repo.TEMPLATE, collections=repo.TEMPLATES_COLLECTION, explain=False,
                                             data_id={"instrument": name})}  # fmt: skip
    templates = 0
    for trixel, detector in sorted(wanted - have):
        image = template_image(star_tile(trixel), detector, shape_px)
        butler.put(Image(image), repo.TEMPLATE, instrument=name, detector=detector, htm7=trixel,
                   run=repo.TEMPLATES_COLLECTION)  # fmt: skip
        templates += 1
    shards: set[int] = set()
    for visit in visits:
        for d in detectors:
            region = sky.detector_region(instrument, d, visit.ra_deg, visit.dec_deg, visit.camera_angle_deg, 60.0)
            shards.update(sky.htm_overlapping(region))
    existing = {ref.dataId["htm7"] for ref in butler.query_datasets(
        repo.REFCAT, collections=repo.REFCATS_COLLECTION, explain=False)}  # fmt: skip
    for trixel in sorted(shards - existing):
        butler.put(refcat_shard(trixel), repo.REFCAT, htm7=trixel, run=repo.REFCATS_COLLECTION)
    return SeedReport(calibs=calibs, templates=templates, refcats=len(shards - existing))


def _seed_calibs(
    butler: Butler, instrument: Instrument, detectors: tuple[int, ...], filters: list[str], shape_px: tuple[int, int]
) -> int:
    name = instrument.name
    run, collection = repo.calib_run(name, CALIB_LABEL), repo.calib_collection(name)
    butler.registry.registerRun(run)
    have = {(ref.datasetType.name, ref.dataId["detector"], ref.dataId.get("physical_filter"))
            for dataset_type in (repo.BIAS, repo.FLAT)
            for ref in butler.query_datasets(dataset_type, collections=run, explain=False,
                                             data_id={"instrument": name})}  # fmt: skip
    new: list[DatasetRef] = []
    for detector in detectors:
        if (repo.BIAS, detector, None) not in have:
            new.append(butler.put(Image(bias_frame(name, detector, shape_px)), repo.BIAS, instrument=name,
                                  detector=detector, run=run))  # fmt: skip
        for physical_filter in filters:
            if (repo.FLAT, detector, physical_filter) not in have:
                new.append(butler.put(Image(flat_frame(name, detector, shape_px)), repo.FLAT, instrument=name,
                                      detector=detector, physical_filter=physical_filter, run=run))  # fmt: skip
    if new:
        butler.registry.certify(collection, new, Timespan(CALIB_VALID_FROM, None))
    return len(new)


def refcat_shard(trixel: int) -> Table:
    """``REFCAT_STARS_PER_SHARD`` synthetic stars uniform in the trixel (id, coord_ra, coord_dec in deg,
    a flux in nJy), the same for the same trixel."""
    triangle = HtmPixelization(sky.TEMPLATE_HTM_LEVEL).triangle(trixel)
    box = triangle.getBoundingBox()
    rng = np.random.default_rng(seed_for("refcat", trixel))
    ra_lo, ra_hi = box.getLon().getA().asDegrees(), box.getLon().getB().asDegrees()
    dec_lo, dec_hi = box.getLat().getA().asDegrees(), box.getLat().getB().asDegrees()
    if ra_hi < ra_lo:
        ra_hi += 360.0
    ra_deg, dec_deg = np.empty(0), np.empty(0)
    while len(ra_deg) < REFCAT_STARS_PER_SHARD:  # rejection sampling from the bounding box, in batches
        ra, dec = rng.uniform(ra_lo, ra_hi, 4096) % 360.0, rng.uniform(dec_lo, dec_hi, 4096)
        inside = [triangle.contains(UnitVector3d(LonLat.fromDegrees(a, d))) for a, d in zip(ra, dec, strict=True)]
        ra_deg, dec_deg = np.concatenate([ra_deg, ra[inside]]), np.concatenate([dec_deg, dec[inside]])
    ra_deg, dec_deg = ra_deg[:REFCAT_STARS_PER_SHARD], dec_deg[:REFCAT_STARS_PER_SHARD]
    flux = 10 ** rng.uniform(3.0, 6.0, len(ra_deg))
    ids = trixel * 10_000 + np.arange(len(ra_deg))
    return Table({"id": ids, "coord_ra": ra_deg, "coord_dec": dec_deg, "phot_flux_nJy": flux})
