"""wait_for_images: the raw image(s) of one visit-detector, as soon as they land, ingested into the
run's local Butler."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis
from lsst.daf.butler import DatasetRef, DimensionRecord

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.adapters import s3
from prompt_processing.butler.records import HeaderMismatch
from prompt_processing.imaging.fits_io import HEADER_PROBE_BYTES, fits_header, from_fits_bytes
from prompt_processing.model import naming
from prompt_processing.model.errors import ImageTimeout, NonRetriableError, RetriableError, VisitError
from prompt_processing.model.events import TAI_MINUS_UTC_S, NextVisit
from prompt_processing.model.failures import is_transient, transient_as_retriable
from tasks.common import step

_BLPOP_SLICE_S = 1.0  # so a stopping activator notices within a second


@dataclass(frozen=True)
class RawImages:
    refs: list[DatasetRef]  # the raws in the local repository, one per snap, in snap order
    records: list[DimensionRecord]  # the visit's dimension records, for the export
    visit_id: int  # the Butler's visit id (its first snap's exposure id)
    landed_at: list[str]  # when each landed (S3 event time)
    waited_s: float  # time blocked waiting for arrivals


@step("wait_for_images")
def wait_for_images(
    ctx: ProcessingContext, clock: StepClock, visit: NextVisit, detector: int
) -> RawImages:
    """Presence first (landed before we looked), then a blocking wait on the router's arrival
    list, then a final re-check; then download and ingest. The wait ends ``image_wait_exposures *
    duration + image_timeout_s`` after the shutter opens (Rubin's exposure x 2 + 120 s by default):
    ImageTimeout (non-retriable) names the visit, detector and snap. A visit picked up after that (a
    late delivery, a rerun the next morning) is checked once and fails at once if its image never
    landed. Redis, S3 or Butler outages are RetriableError; a raw that is not a readable FITS file, or
    whose header disagrees with the visit (another group, detector, snap or filter), is a
    NonRetriableError saying so.
    """
    instrument, group = visit.instrument, visit.groupId
    timeout_s = ctx.settings.visit.image_wait_exposures * visit.duration + ctx.settings.visit.image_timeout_s
    deadline = visit.startTime - TAI_MINUS_UTC_S + timeout_s
    refs, records, landed, waited_s, visit_id = [], [], [], 0.0, 0
    for snap in range(max(visit.nimages, 1)):
        started = time.perf_counter()
        with clock.timing("wait"):
            found = _await_presence(ctx, instrument, group, snap, detector, deadline)
        waited_s += time.perf_counter() - started
        if found is None:
            unpaired = _unpaired_raw(ctx, visit, detector, snap)
            if unpaired is not None:
                raise ImageTimeout(
                    f"raw {unpaired} of {instrument} visit {group} detector {detector} snap {snap} landed, but its "
                    f"sidecar ({unpaired.removesuffix('.fits')}.json) never did within {timeout_s:.0f} s of the "
                    "shutter opening: the router needs the sidecar"
                )
            raise ImageTimeout(
                f"no raw image for {instrument} visit {group} detector {detector} snap {snap} "
                f"within {timeout_s:.0f} s of the shutter opening"
            )
        with clock.timing("download"):
            data = s3.get_bytes(ctx.s3, found["bucket"], found["key"])
        with clock.timing("ingest"):
            ref, snap_records = _ingest(ctx, visit, detector, snap, data, f"s3://{found['bucket']}/{found['key']}")
        refs.append(ref)
        records.extend(snap_records)
        visit_id = visit_id or int(ref.dataId["exposure"])  # a visit is numbered after its first snap
        landed.append(found["landed_at"])
    return RawImages(refs=refs, records=records, visit_id=visit_id, landed_at=landed, waited_s=waited_s)


def _ingest(
    ctx: ProcessingContext, visit: NextVisit, detector: int, snap: int, data: bytes, where: str
) -> tuple[DatasetRef, list[DimensionRecord]]:
    try:
        image, header = from_fits_bytes(data)
    except ValueError as exc:
        raise NonRetriableError(f"raw {where} (snap {snap}) is unusable: {exc}") from exc
    try:
        with transient_as_retriable("local Butler"):
            return ctx.local_repo(visit.instrument).ingest_raw(visit, detector, snap, image, header)
    except HeaderMismatch as exc:
        raise NonRetriableError(f"raw {where} does not belong to this visit-detector: {exc}") from exc


def _unpaired_raw(ctx: ProcessingContext, visit: NextVisit, detector: int, snap: int) -> str | None:
    """The S3 URI of this visit-detector's raw if it landed without its sidecar (from the router's unpaired
    raws of the night: each candidate's header is read with a ranged GET), else None."""
    try:
        members = ctx.redis.smembers(naming.unpaired_raws_key(visit.instrument, visit.day_obs(), detector))
    except redis.RedisError:
        return None  # the timeout stands on its own; this only explains it
    for member in sorted(m.decode() if isinstance(m, bytes) else m for m in members):
        bucket, _, key = member.partition("/")
        try:
            header = fits_header(s3.get_bytes(ctx.s3, bucket, key, HEADER_PROBE_BYTES))
        except (ValueError, VisitError):
            continue
        if header.get("GROUPID") == visit.groupId and header.get("CURINDEX", 1) == snap + 1:
            return f"s3://{bucket}/{key}"
    return None


def _await_presence(
    ctx: ProcessingContext, instrument: str, group: str, snap: int, detector: int, deadline: float
) -> dict[str, Any] | None:
    presence = naming.presence_key(instrument, group, snap, detector)
    arrivals = naming.arrivals_key(instrument, group, snap, detector)
    try:
        while True:
            value = ctx.redis.get(presence)
            if value is not None:
                return dict(json.loads(value))
            remaining_s = deadline - time.time()
            if remaining_s <= 0:
                return None
            if ctx.stopping.is_set():
                raise RetriableError(f"activator {ctx.name} is stopping; visit {group} detector {detector} handed back")
            ctx.check_lease()
            ctx.redis.blpop([arrivals], timeout=min(remaining_s, _BLPOP_SLICE_S))
    except redis.RedisError as exc:
        if not is_transient(exc):
            raise NonRetriableError(f"redis while waiting for {presence}: {type(exc).__name__}: {exc}") from exc
        raise RetriableError(f"redis while waiting for {presence}: {exc}") from exc
