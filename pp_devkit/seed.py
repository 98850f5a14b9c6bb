"""The simulator's central repository: bias and flat certified per detector, templates (HTM level 9) and
reference catalogue shards (HTM level 7) where the night will look, all through the Butler.

Idempotent: what the repository already has (same data id) is kept, so a night seeds only what is new.
Templates and refcat shards are the sky of ``skyfield`` at the pixel scale of ``shape_px`` images: a
template is a level-9 trixel's deep image on its own TAN grid, carrying that WCS as its sky projection.
``holes`` leaves out the templates under some visits' detectors, as a real survey has places without one
(a neighbouring visit may still bring part of one: a partly covered detector).
"""


from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import astropy.time
import numpy as np
from lsst.daf.butler import Butler, DatasetRef, Timespan
from lsst.images import Image

from pp_devkit.sim import PlannedVisit
from pp_devkit.skyfield import refcat_shard, sky_template
from pp_devkit.synth import bias_frame, flat_frame
from prompt_processing.butler import repo
from prompt_processing.butler.local import set_image_compression
from prompt_processing.model import sky
from prompt_processing.model.instruments import Instrument
from prompt_processing.pipelines.calibrate import with_projection

CALIB_LABEL = "sim"
STALE_BIAS_ADU = 100.0  # a master bias with a median above this still holds the amplifier levels
CALIB_VALID_FROM = astropy.time.Time("2020-01-01T00:00:00", scale="tai")


@dataclass(frozen=True)
class SeedReport:
    calibs: int
    templates: int
    refcats: int


def seed_central(
    butler: Butler, instrument: Instrument, detectors: Iterable[int], visits: list[PlannedVisit],
    shape_px: tuple[int, int], *, holes: Iterable[int] = (),
) -> SeedReport:  # fmt: skip
    """Seed calibrations for ``detectors`` (flats for the visits' filters), templates for every level-9
    cell the visits' detectors overlap except those under visit indices in ``holes``, and the refcat
    shards their regions overlap. Returns what was added.

    Images are written plain (this process's lsst-images default is set so): reading a tile-compressed
    4k template or calibration back cost ~1.5 s of GZIP decompression each, most of a 4k visit's time.
    """
    set_image_compression(False)
    detectors = tuple(detectors)
    name = instrument.name
    calibs = _seed_calibs(butler, instrument, detectors, sorted({v.filters for v in visits}), shape_px)
    skip = set(holes)
    regions = {(i, d): sky.detector_region(instrument, d, v.ra_deg, v.dec_deg, v.camera_angle_deg, 60.0)
               for i, v in enumerate(visits) for d in detectors}  # fmt: skip
    wanted = {t for (i, _), region in regions.items() if i not in skip
              for t in sky.htm_overlapping(region, sky.TEMPLATE_HTM_LEVEL)}  # fmt: skip
    have = {ref.dataId["htm9"] for ref in butler.query_datasets(
        repo.TEMPLATE, collections=repo.TEMPLATES_COLLECTION, explain=False, data_id={"instrument": name})}  # fmt: skip
    scale = sky.pixel_scale_arcsec(instrument, detectors[0], shape_px[1])
    for trixel in sorted(wanted - have):
        image, wcs = sky_template(trixel, scale)
        butler.put(with_projection(image, wcs, name, 0), repo.TEMPLATE, instrument=name, htm9=trixel,
                   run=repo.TEMPLATES_COLLECTION)  # fmt: skip
    shards = {t for region in regions.values() for t in sky.htm_overlapping(region)}
    existing = {ref.dataId["htm7"] for ref in _current_refcats(butler)}
    for trixel in sorted(shards - existing):
        butler.put(refcat_shard(trixel, scale), repo.REFCAT, htm7=trixel, run=repo.REFCATS_COLLECTION)
    return SeedReport(calibs=calibs, templates=len(wanted - have), refcats=len(shards - existing))


def _current_refcats(butler: Butler) -> list[DatasetRef]:
    """The refcat shards already seeded, once those of an older simulator (random stars, no ``flux_nJy``:
    not the sky the raws show) are removed, so a repository kept from an earlier version is reseeded."""
    refs = butler.query_datasets(repo.REFCAT, collections=repo.REFCATS_COLLECTION, explain=False)
    stale = [ref for ref in refs if "flux_nJy" not in butler.get(ref).colnames]
    if stale:
        butler.pruneDatasets(stale, disassociate=True, unstore=True, purge=True)
    return [ref for ref in refs if ref not in stale]


def _seed_calibs(
    butler: Butler, instrument: Instrument, detectors: tuple[int, ...], filters: list[str], shape_px: tuple[int, int]
) -> int:
    name = instrument.name
    run, collection = repo.calib_run(name, CALIB_LABEL), repo.calib_collection(name)
    butler.registry.registerRun(run)
    _drop_stale_biases(butler, name, run, collection)
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


def _drop_stale_biases(butler: Butler, instrument: str, run: str, collection: str) -> None:
    """Remove the master biases of an older simulator, whose raws had no overscan (their biases hold the
    amplifiers' ~1000 ADU levels; today's are overscan-corrected, about 0), so a kept repository is
    reseeded with biases that fit today's raws."""
    refs = butler.query_datasets(repo.BIAS, collections=run, explain=False, data_id={"instrument": instrument})
    stale = [ref for ref in refs if abs(float(np.median(butler.get(ref).array))) > STALE_BIAS_ADU]
    if stale:
        butler.registry.decertify(collection, repo.BIAS, Timespan(CALIB_VALID_FROM, None),
                                  dataIds=[ref.dataId for ref in stale])  # fmt: skip
        butler.pruneDatasets(stale, disassociate=True, unstore=True, purge=True)
