"""associate: the visit-detector's DiaSources joined to the APDB's DiaObjects, and its alerts packaged.

Nothing is written here (``publish`` stores and sends). What the APDB already holds decides the work
(``ApdbState``, looked up once the raws are in): a new visit-detector is associated; one stored but
whose alerts are not known to have gone out (its worker died between the two) gets its alerts again,
built from the rows the APDB holds, so they are the very alerts (same ids) it would have sent; one
whose alerts went out gets none (a forced rerun rewrites its outputs only).

Positions come from the detector's nominal WCS (pointing, focal plane, rotation) and fluxes from a
nominal zero point, until image calibration fits both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

import astropy.time
import pandas as pd
from astropy.wcs import WCS
from lsst.daf.butler import DimensionRecord
from lsst.sphgeom import ConvexPolygon

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.alerts.cutouts import Stamper
from prompt_processing.apdb import association
from prompt_processing.apdb.db import OUTAGES, ApdbMissing
from prompt_processing.butler.instruments import band
from prompt_processing.imaging.algorithms import DEFAULT_KERNEL_FWHM_PX, ProcessResult
from prompt_processing.model import naming, sky
from prompt_processing.model.errors import NonRetriableError, RetriableError
from prompt_processing.model.events import NextVisit
from prompt_processing.model.instruments import get_instrument
from tasks.common import step
from tasks.wait_for_images import RawImages

NOMINAL_ZERO_POINT_MAG = 28.0
"""AB magnitude of a source giving 1 e-/s (about LSSTCam's r band); nJy = e-/s * 10**((31.4 - zp) / 2.5)."""


class ApdbState(StrEnum):
    """What the APDB (and the alerts-sent marker) say of a visit-detector."""

    NEW = "new"  # not in the APDB: associate, store, send
    STORED = "stored"  # in the APDB, alerts not known sent: send them (from the APDB's rows), store nothing
    SENT = "sent"  # in the APDB, alerts sent: nothing to store or send


@dataclass(frozen=True)
class Associated:
    """What ``publish`` writes: DiaObjects and DiaSources to store (None: the APDB has them) and the
    framed alerts, keyed by diaSourceId."""

    visit_id: int
    visit_time: astropy.time.Time
    objects: pd.DataFrame | None
    sources: pd.DataFrame | None
    alerts: list[tuple[str, bytes]] = field(default_factory=list)
    n_new_objects: int = 0
    schema_id: int = 0


def apdb_state(ctx: ProcessingContext, visit: NextVisit, detector: int, visit_id: int) -> ApdbState:
    """The visit-detector's ``ApdbState``; RetriableError if the APDB cannot be reached."""
    try:
        if not ctx.apdb.containsVisitDetector(visit_id, detector):
            return ApdbState.NEW
    except ApdbMissing as exc:
        raise NonRetriableError(str(exc)) from exc
    except OUTAGES as exc:
        raise RetriableError(f"APDB: {type(exc).__name__}: {exc}") from exc
    sent = ctx.redis.exists(naming.published_key(visit.instrument, visit.groupId, detector))
    return ApdbState.SENT if sent else ApdbState.STORED


@step("associate")
def associate(
    ctx: ProcessingContext, clock: StepClock, visit: NextVisit, detector: int, raws: RawImages,
    result: ProcessResult, state: ApdbState,
) -> Associated:  # fmt: skip
    """Associate (``ApdbState.NEW``) or read back (``STORED``) the DiaSources and package one alert each.
    NonRetriableError for more DiaSources than ``alerts.max_per_detector``; RetriableError if the APDB
    cannot be reached."""
    with clock.timing("associate"):
        instrument = get_instrument(visit.instrument)
        assert instrument is not None, "the fan-out admits known instruments only"
        wcs = sky.detector_wcs(instrument, detector, *visit.position, visit.cameraAngle, result.calexp.shape)
        visit_time = _midpoint(raws.records)
        if state is ApdbState.SENT:
            return Associated(raws.visit_id, visit_time, None, None)
        region = sky.detector_region(instrument, detector, *visit.position, visit.cameraAngle, 5.0)
        try:
            if state is ApdbState.NEW:
                sources, objects, n_new = _associate(ctx, visit, detector, raws, result, wcs, region, visit_time)
                stored_objects: pd.DataFrame | None = objects
            else:
                sources, objects = _stored(ctx, raws.visit_id, detector, region, visit_time)
                stored_objects, n_new = None, 0
            prior = _prior_sources(ctx, objects, region, visit_time, raws.visit_id)
        except OUTAGES as exc:
            raise RetriableError(f"APDB: {type(exc).__name__}: {exc}") from exc
        alerts = _package(ctx, result, wcs, sources, objects, prior)
        return Associated(raws.visit_id, visit_time, stored_objects, sources if state is ApdbState.NEW else None,
                          alerts, n_new, ctx.alert_schema.schema_id)  # fmt: skip


def _associate(
    ctx: ProcessingContext, visit: NextVisit, detector: int, raws: RawImages, result: ProcessResult, wcs: WCS,
    region: ConvexPolygon, visit_time: astropy.time.Time,
) -> tuple[pd.DataFrame, pd.DataFrame, int]:  # fmt: skip
    n = len(result.dia_sources)
    limit = ctx.settings.alerts.max_per_detector
    if n > limit:
        raise NonRetriableError(f"{n} DiaSources, more than alerts.max_per_detector ({limit}): a bad subtraction?")
    exposure_s = visit.duration
    where = association.VisitDetector(
        visit.instrument, raws.visit_id // 1_000_000, raws.visit_id % 1_000_000, raws.visit_id, detector,
        band(visit.filters), float(visit_time.mjd), exposure_s,
    )  # fmt: skip
    sources = association.dia_sources(
        where, result.dia_sources, wcs, flux_njy_per_e=10 ** ((31.4 - NOMINAL_ZERO_POINT_MAG) / 2.5) / exposure_s,
        processed_mjd_tai=float(astropy.time.Time(time.time(), format="unix").tai.mjd),
        aperture_radius_px=DEFAULT_KERNEL_FWHM_PX, cutout_size_px=ctx.settings.alerts.cutout_size_px,
    )  # fmt: skip
    joined = association.associate(sources, ctx.apdb.getDiaObjects(region),
                                   radius_arcsec=ctx.settings.apdb.association_radius_arcsec)  # fmt: skip
    return joined.sources, joined.objects, joined.n_new_objects


def _stored(
    ctx: ProcessingContext, visit_id: int, detector: int, region: ConvexPolygon, visit_time: astropy.time.Time
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The visit-detector's DiaSources as stored, and their DiaObjects' current versions."""
    found = ctx.apdb.getDiaSources(region, None, visit_time)
    sources = pd.DataFrame() if found is None else found
    if len(sources):
        sources = sources[(sources["visit"] == visit_id) & (sources["detector"] == detector)]
    objects = ctx.apdb.getDiaObjects(region)
    if len(sources):
        objects = objects[objects["diaObjectId"].isin(sources["diaObjectId"])]
    return sources.sort_values("diaSourceId") if len(sources) else sources, objects


def _prior_sources(
    ctx: ProcessingContext, objects: pd.DataFrame, region: ConvexPolygon, visit_time: astropy.time.Time,
    visit_id: int,
) -> dict[int, list[dict[str, object]]]:  # fmt: skip
    """Earlier DiaSources of ``objects`` (other visits), oldest first, by diaObjectId."""
    known = [int(i) for i in objects["diaObjectId"]] if len(objects) else []
    if not known or ctx.settings.apdb.prior_sources_months == 0:
        return {}
    found = ctx.apdb.getDiaSources(region, known, visit_time)
    if found is None or not len(found):
        return {}
    found = found[found["visit"] != visit_id].sort_values("midpointMjdTai")
    prior: dict[int, list[dict[str, object]]] = {}
    for row in found.to_dict("records"):
        prior.setdefault(int(row["diaObjectId"]), []).append(row)
    return prior


def _package(
    ctx: ProcessingContext, result: ProcessResult, wcs: WCS, sources: pd.DataFrame, objects: pd.DataFrame,
    prior: dict[int, list[dict[str, object]]],
) -> list[tuple[str, bytes]]:  # fmt: skip
    if not len(sources):
        return []
    schema = ctx.alert_schema
    stamper = Stamper(result.calexp, result.difference.model, result.difference.image, wcs,
                      ctx.settings.alerts.cutout_size_px)  # fmt: skip
    by_id = {int(row["diaObjectId"]): row for row in objects.to_dict("records")} if len(objects) else {}
    alerts = []
    for source in sources.to_dict("records"):
        object_id = int(source["diaObjectId"])
        record = schema.record(source, by_id.get(object_id), prior.get(object_id, []),
                               stamper.cutouts(float(source["x"]), float(source["y"])))  # fmt: skip
        try:
            alerts.append((str(int(source["diaSourceId"])), schema.encode(record)))
        except ValueError as exc:
            raise NonRetriableError(str(exc)) from exc
    return alerts


def _midpoint(records: list[DimensionRecord]) -> astropy.time.Time:
    """The middle of the visit's exposure (TAI), from its visit record's timespan."""
    span = next(r.timespan for r in records if r.definition.name == "visit")
    return span.begin + (span.end - span.begin) / 2
