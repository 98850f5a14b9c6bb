"""One activator's local repository: what a visit-detector reads and writes, next to its process.

A ``LocalRepo`` is a SQLite registry with its files in scratch space (``butler.local_root``), made
when the activator first needs it and deleted by ``close()``. Per visit-detector:

1. ``preload`` (before the image lands): from the NextVisit's pointing, the detector's predicted sky
   region; the central repository's bias and flat valid at the visit's time, the template of the
   detector's sky position and the reference-catalogue shards overlapping the region; what is not here
   yet is transferred (dimension records with it) and calibrations are re-certified with their central
   validity ranges. Missing inputs are reported, not raised: the caller decides what it can run.
2. ``ingest_raw``: the raw's dimension records (``butler.records``) and the raw as an ``ImageV2``.
3. ``write_outputs``: the outputs in the attempt's own RUN (``repo.output_run``).
4. ``export``: the output files copied into the central datastore at the paths the central repository
   would give them, and the ``pp-output`` event (``output_event``) the Butler writer ingests them from.
   Nothing here writes the central registry.

Caching: calibrations stay for the activator's life, up to ``calib_cache_entries`` (least recently
used pruned first); templates and refcat shards up to ``template_cache_entries`` (default 0: pruned
after the visit, as Rubin found them not worth keeping; ``make bench`` measures both).
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import astropy.time
import numpy as np
import numpy.typing as npt
from lsst.daf.butler import Butler, DatasetRef, DimensionRecord, Timespan
from lsst.daf.butler._collection_type import CollectionType
from lsst.images import Image
from lsst.images.fits import FitsCompressionOptions
from lsst.resources import ResourcePath

from prompt_processing.butler import repo
from prompt_processing.butler.instruments import INSTRUMENTS
from prompt_processing.butler.output_event import OutputEvent
from prompt_processing.butler.records import HeaderValue, check_header, visit_records
from prompt_processing.model import sky
from prompt_processing.model.events import CoordinateSystem, NextVisit
from prompt_processing.model.instruments import get_instrument
from prompt_processing.settings import ButlerSettings


@dataclass
class Preloaded:
    """What preload found for one visit-detector: refs in the local repository, and what was missing."""

    bias: DatasetRef | None = None
    flat: DatasetRef | None = None
    templates: list[DatasetRef] = field(default_factory=list)  # those overlapping the detector's region
    refcats: list[DatasetRef] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # "bias", "flat", "template", "refcat", with why
    transferred: int = 0  # datasets copied from the central repository for this visit (the rest were cached)


class LocalRepo:
    """A local repository for one instrument, fed from ``central`` (read-only)."""

    def __init__(
        self, root: Path, central: Butler, central_uri: str, instrument: str, settings: ButlerSettings
    ) -> None:
        if instrument not in INSTRUMENTS:
            raise ValueError(f"no Butler instrument {instrument!r} (known: {', '.join(INSTRUMENTS)})")
        self.root, self.central, self.instrument, self.settings = root, central, instrument, settings
        self.central_root = ResourcePath(central_uri, forceDirectory=True)
        set_image_compression(settings.compress_images)
        shutil.rmtree(root, ignore_errors=True)  # scratch: whatever an earlier process left is not ours
        root.mkdir(parents=True)
        Butler.makeRepo(str(root))
        self.butler = Butler.from_config(str(root), writeable=True)
        INSTRUMENTS[instrument].register(self.butler.registry)
        for spec in repo.DATASET_TYPES.values():
            self.butler.registry.registerDatasetType(spec.dataset_type(self.butler.dimensions))
        self.butler.registry.registerCollection(repo.calib_collection(instrument), CollectionType.CALIBRATION)
        for run in (repo.raw_run(instrument), repo.TEMPLATES_COLLECTION, repo.REFCATS_COLLECTION):
            self.butler.registry.registerRun(run)  # a pipeline's inputs, present even before anything is in them
        self._cached: dict[str, OrderedDict[Any, DatasetRef]] = {"calib": OrderedDict(), "sky": OrderedDict()}
        self._limits = {"calib": settings.calib_cache_entries, "sky": settings.template_cache_entries}
        # What this repository holds that a retry may ask for again: calibrations with their validity (found
        # again without asking the central repository while the visit is inside it), datasets written here.
        self._calibs: dict[tuple[str, int, str], tuple[DatasetRef, Timespan]] = {}
        self._written: dict[tuple[str, str, tuple[Any, ...]], DatasetRef] = {}

    # -- preload ---------------------------------------------------------------------------------

    def preload(self, visit: NextVisit, detector: int) -> Preloaded:
        """Bring this visit-detector's calibrations, template and refcat shards into the local repository."""
        found = Preloaded()
        timespan = visit_timespan(visit)
        wanted: list[tuple[str, DatasetRef]] = []
        calib = repo.calib_collection(self.instrument)
        base = {"instrument": self.instrument, "detector": detector}
        for name, data_id in ((repo.BIAS, base), (repo.FLAT, base | {"physical_filter": visit.filters})):
            ref = self._cached_calib(name, detector, visit.filters, timespan)
            if ref is None:
                ref = self.central.find_dataset(name, data_id, collections=calib, timespan=timespan)
            if ref is None:
                found.missing.append(f"{name}: none certified in {calib} for detector {detector} at the visit's time")
            else:
                wanted.append(("calib", ref))
                setattr(found, name, ref)
        if visit.coordinateSystem == CoordinateSystem.ICRS:
            templates, refcats, why = self._sky_inputs(visit, detector)
        else:  # position is not (ra, dec): there is no sky region to look in
            templates, refcats = [], []
            why = f"the visit's coordinateSystem is {visit.coordinateSystem.name}, not ICRS: no sky position"
        if not templates:
            found.missing.append(f"template: {why}")
        found.templates = templates
        wanted.extend(("sky", ref) for ref in templates)
        if not refcats:
            found.missing.append("refcat: no shard overlaps the detector's region")
        found.refcats = refcats
        wanted.extend(("sky", ref) for ref in refcats)
        found.transferred = self._bring(wanted, calib)
        return found

    def _sky_inputs(self, visit: NextVisit, detector: int) -> tuple[list[DatasetRef], list[DatasetRef], str]:
        """(templates, refcat shards, why no template) overlapping the detector's predicted region."""
        camera = get_instrument(self.instrument)
        assert camera is not None
        ra, dec = visit.position
        region = sky.detector_region(camera, detector, ra, dec, visit.cameraAngle, self.settings.region_padding_arcsec)
        cells = sky.htm_overlapping(region, sky.TEMPLATE_HTM_LEVEL)
        templates = list(self.central.query_datasets(
            repo.TEMPLATE, collections=repo.TEMPLATES_COLLECTION, explain=False,
            data_id={"instrument": self.instrument}, where="htm9 IN (cells)", bind={"cells": cells},
        ))  # fmt: skip
        centre_ra, centre_dec = sky.detector_centre(camera, detector, ra, dec, visit.cameraAngle)
        why = "" if templates else (
            f"none in {repo.TEMPLATES_COLLECTION} overlaps detector {detector} (its centre: ra {centre_ra:.3f}, "
            f"dec {centre_dec:.3f} deg; {len(cells)} htm9 cells looked in)"
        )  # fmt: skip
        shards = sky.htm_overlapping(region, sky.REFCAT_HTM_LEVEL)
        refcats = self.central.query_datasets(repo.REFCAT, collections=repo.REFCATS_COLLECTION, explain=False,
                                              where="htm7 IN (shards)", bind={"shards": shards})  # fmt: skip
        return templates, list(refcats), why

    def _bring(self, wanted: list[tuple[str, DatasetRef]], calib: str) -> int:
        """Transfer what is not cached; certify new calibrations; prune beyond the cache limits."""
        todo = [ref for kind, ref in wanted if ref.id not in self._cached[kind]]
        if todo:
            self.butler.transfer_from(self.central, todo, transfer="copy", transfer_dimensions=True)
            new_calibs = [ref for ref in todo if ref.datasetType.isCalibration()]
            for ref, validity in self._validity(new_calibs, calib).items():
                self.butler.registry.certify(calib, [ref], validity)
                key = (ref.datasetType.name, int(ref.dataId["detector"]), str(ref.dataId.get("physical_filter", "")))
                self._calibs[key] = (ref, validity)
        for kind, ref in wanted:
            self._cached[kind][ref.id] = ref
            self._cached[kind].move_to_end(ref.id)
        self._prune("calib", self._limits["calib"])
        return len(todo)

    def _cached_calib(self, name: str, detector: int, physical_filter: str, timespan: Timespan) -> DatasetRef | None:
        """A calibration already here whose validity range holds the visit's time, if any (and still cached)."""
        found = self._calibs.get((name, detector, physical_filter if name == repo.FLAT else ""))
        if found is None or found[0].id not in self._cached["calib"] or not found[1].contains(timespan):
            return None
        return found[0]

    def _validity(self, refs: list[DatasetRef], calib: str) -> dict[DatasetRef, Timespan]:
        """The central validity range of each calibration in ``refs``."""
        out: dict[DatasetRef, Timespan] = {}
        for ref in refs:
            name = ref.datasetType.name
            with self.central.query() as query:
                rows = query.join_dataset_search(name, collections=[calib]).where(
                    f"{name}.dataset_id = ref_id", bind={"ref_id": ref.id}
                ).general(ref.datasetType.dimensions, dataset_fields={name: {"timespan"}}, find_first=False)
                for row in rows:
                    out[ref] = row[f"{name}.timespan"]
        return out

    def end_visit(self) -> None:
        """A visit-detector is done (its outputs exported, or it failed): prune its raws and outputs, and
        templates and refcat shards beyond their cache limit, so scratch space stays bounded."""
        written = list(self._written.values())
        self._written.clear()
        if written:
            self.butler.pruneDatasets(written, disassociate=True, unstore=True, purge=True)
        self._prune("sky", self._limits["sky"])

    def _prune(self, kind: str, limit: int) -> None:
        cached = self._cached[kind]
        excess = [cached.popitem(last=False)[1] for _ in range(max(len(cached) - limit, 0))]
        if excess:
            self.butler.pruneDatasets(excess, disassociate=True, unstore=True, purge=True)

    # -- raws and outputs ------------------------------------------------------------------------

    def ingest_raw(
        self, visit: NextVisit, detector: int, snap: int, image: npt.NDArray[np.float32],
        header: Mapping[str, HeaderValue],
    ) -> tuple[DatasetRef, list[DimensionRecord]]:  # fmt: skip
        """Insert the raw's dimension records and store it; (its ref, the records). ``HeaderMismatch`` if
        its header disagrees with ``visit``. Ingesting the same raw again returns the stored one."""
        raw = check_header(header, visit, detector, snap)
        records = visit_records(self.butler.dimensions, visit, raw)
        with self.butler.transaction():
            for record in records:
                self.butler.registry.insertDimensionData(record.definition, record, skip_existing=True)
        data_id = {"instrument": self.instrument, "detector": detector, "exposure": raw.exposure_id}
        return self._put(Image(image), repo.RAW, data_id, repo.raw_run(self.instrument)), records

    @property
    def input_collections(self) -> list[str]:
        """Where a pipeline finds its inputs here: the raws, the calibrations, the templates, the refcat shards."""
        return [repo.raw_run(self.instrument), repo.calib_collection(self.instrument), repo.TEMPLATES_COLLECTION,
                repo.REFCATS_COLLECTION]  # fmt: skip

    def adopt(self, refs: Iterable[DatasetRef]) -> None:
        """Datasets written here by others (the pipeline executor): pruned with the visit-detector's own."""
        for ref in refs:
            self._written[(ref.run, ref.datasetType.name, tuple(sorted(ref.dataId.required.items())))] = ref

    def adopt_run(self, run: str) -> None:
        """Everything in ``run`` (a failed pipeline's partial outputs), as ``adopt``."""
        self.adopt(self.butler.registry.queryDatasets(..., collections=run))

    def read(self, ref: DatasetRef) -> Any:
        """A dataset of this repository (an ``lsst.images.Image``, a table...)."""
        return self.butler.get(ref)

    def write_outputs(
        self, run: str, visit_id: int, detector: int, outputs: Mapping[str, Any]
    ) -> list[DatasetRef]:
        """Store ``outputs`` (dataset type name -> object; images as arrays) in ``run``; a retry of the same
        attempt finds the ones already stored and keeps them."""
        self.butler.registry.registerRun(run)
        data_id = {"instrument": self.instrument, "visit": visit_id, "detector": detector}
        return [self._put(Image(obj) if isinstance(obj, np.ndarray) else obj, name, data_id, run)
                for name, obj in outputs.items()]  # fmt: skip

    def _put(self, obj: Any, name: str, data_id: dict[str, Any], run: str) -> DatasetRef:
        """Store ``obj`` unless this repository already did (a retried step): then the stored one."""
        key = (run, name, tuple(sorted(data_id.items())))
        ref = self._written.get(key)
        if ref is None:
            ref = self._written[key] = self.butler.put(obj, name, data_id, run=run)
        return ref

    def export(self, refs: Iterable[DatasetRef], records: Iterable[DimensionRecord], **about: Any) -> OutputEvent:
        """Copy the files of ``refs`` into the central datastore (same relative paths as here, which hold
        the RUN name, so attempts never overwrite each other) and describe them for the Butler writer."""
        local_root = ResourcePath(str(self.root), forceDirectory=True)
        datasets = []
        for ref in refs:
            source = self.butler.getURI(ref)
            relative = source.relative_to(local_root)
            if relative is None:
                raise RuntimeError(f"{source} is outside the local repository {local_root}")
            self.central_root.join(relative).transfer_from(source, transfer="copy", overwrite=True)
            datasets.append((relative, ref))
        return OutputEvent(records=_unique(records), datasets=datasets, about=about)

    def close(self) -> None:
        """Close the local Butler and delete its repository (scratch space). The central Butler is the caller's."""
        self.butler.close()
        shutil.rmtree(self.root, ignore_errors=True)


_COMPRESSED = FitsCompressionOptions.DEFAULT


def set_image_compression(enabled: bool) -> None:
    """Whether images this process writes are tile-compressed (lsst-images' default: lossless GZIP_2).

    Process-wide: lsst-images keeps the default on ``FitsCompressionOptions.DEFAULT``, which its FITS
    writer falls back to for every image without a write recipe; ``None`` there writes plain images.
    """
    FitsCompressionOptions.DEFAULT = _COMPRESSED if enabled else None


def visit_timespan(visit: NextVisit) -> Timespan:
    """From the shutter opening (``startTime``, TAI) to the end of the exposure."""
    begin = astropy.time.Time(visit.startTime, format="unix_tai")
    return Timespan(begin, begin + astropy.time.TimeDelta(max(visit.duration, 1.0), format="sec"))


def _unique(records: Iterable[DimensionRecord]) -> list[DimensionRecord]:
    seen: dict[tuple[str, Any], DimensionRecord] = {}
    for record in records:
        seen.setdefault((record.definition.name, record.dataId.required_values), record)
    return list(seen.values())

