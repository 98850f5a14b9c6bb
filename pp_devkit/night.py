"""`pp sim night`: a simulated night end to end — next-visit events, then the camera's raws.

Before the night, the central Butler repository is seeded (``pp_devkit.seed``): each active
detector's bias and flat, a template for every (HTM7 trixel, detector) the night will look at
(less ``template_holes``), the refcat shards around them. Then for each visit: the
NextVisit event at its cadence, and at ``startTime + duration`` (per snap) one synthetic raw
FITS plus its sidecar JSON per active detector, uploaded to the raw bucket with boto3, each
followed by its S3 ``ObjectCreated`` notification on ``raw-notifications``. The injected
transients are kept as truth in the truth bucket (``truth/...``) for evaluation.
"""

from __future__ import annotations

import heapq
import itertools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import astropy.time
from rich.progress import Progress

from pp_devkit.seed import SeedReport, seed_central
from pp_devkit.sim import PlannedVisit, next_visit_message, plan_visits
from pp_devkit.skyfield import raw_scene
from pp_devkit.synth import raw_image
from prompt_processing.adapters import kafka, s3
from prompt_processing.apdb.db import init_apdb
from prompt_processing.butler import repo
from prompt_processing.imaging.fits_io import to_fits_bytes
from prompt_processing.model import layout, sky
from prompt_processing.model.events import TAI_MINUS_UTC_S, day_obs
from prompt_processing.model.instruments import Instrument
from prompt_processing.settings import Settings


@dataclass(frozen=True)
class NightPlan:
    instrument: Instrument
    detectors: tuple[int, ...]
    n_visits: int
    cadence_s: float
    lead_s: float
    duration_s: float
    shape_px: tuple[int, int]
    n_transients: int
    seed: int = 0
    template_holes: tuple[int, ...] = ()  # visits (by index) whose templates the central repo lacks


class Agenda:
    """Actions to run at given unix times, in time order (ties in the order added)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], object]]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, when_utc_s: float, action: Callable[[], object]) -> None:
        heapq.heappush(self._heap, (when_utc_s, next(self._order), action))

    def run_next(self) -> None:
        """Sleep until the earliest action is due, then run it."""
        when, _, action = heapq.heappop(self._heap)
        if (delay_s := when - time.time()) > 0:
            time.sleep(delay_s)
        action()


def seed_central_repo(settings: Settings, plan: NightPlan, visits: list[PlannedVisit]) -> SeedReport:
    """Make the central repository and the APDB if needed (``pp butler init``, ``pp apdb init``) and seed
    what the night needs."""
    init_apdb(settings.apdb)
    butler = repo.init_central(settings.butler, settings.s3)
    return seed_central(butler, plan.instrument, plan.detectors, visits, plan.shape_px, holes=plan.template_holes)


def run_night(settings: Settings, plan: NightPlan, *, show_progress: bool = True) -> list[dict[str, Any]]:
    """Send the night's events and images in real time; return the NextVisit bodies sent."""
    client = s3.make_client(settings.s3)
    s3.ensure_buckets(client, [settings.s3.raw_bucket, settings.s3.truth_bucket])
    drafts = plan_visits(plan.instrument, plan.n_visits, seed=plan.seed)
    visits = [replace(v, duration_s=plan.duration_s) for v in drafts]
    seed_central_repo(settings, plan, visits)
    producer = kafka.make_producer(settings.kafka)
    start, seq_base = time.time(), int(time.time()) % 90_000 * 10  # seqNum stays below 10**6
    # Events at their cadence; each event schedules its snaps for when their exposure ends.
    agenda = Agenda()
    sent: list[dict[str, Any]] = []
    for i, planned in enumerate(visits):
        agenda.add(start + i * plan.cadence_s,
                   _event_action(settings, plan, planned, i, seq_base, producer, client, agenda, sent))  # fmt: skip
    total = plan.n_visits + sum(max(v.nimages, 1) for v in visits) * len(plan.detectors)
    with Progress(disable=not show_progress) as progress:
        task = progress.add_task(f"night: {plan.n_visits} {plan.instrument.name} visits", total=total)
        while agenda:
            agenda.run_next()
            progress.advance(task)
    client.close()
    if producer.flush(30.0):
        raise RuntimeError("Kafka did not confirm every event of the night")
    return sent


def _event_action(
    settings: Settings, plan: NightPlan, planned: PlannedVisit, index: int, seq_base: int,
    producer: Any, client: Any, agenda: Agenda, sent: list[dict[str, Any]],
) -> Callable[[], None]:  # fmt: skip
    def send_event() -> None:
        body = next_visit_message(plan.instrument, planned, now_utc_s=time.time(), lead_s=plan.lead_s, seq_num=index)
        producer.produce(settings.kafka.next_visit_topic, json.dumps(body).encode(), key=body["groupId"])
        producer.poll(0)
        sent.append(body)
        shutter_utc = body["startTime"] - TAI_MINUS_UTC_S
        for snap in range(max(planned.nimages, 1)):
            snap_end = shutter_utc + (snap + 1) * planned.duration_s / max(planned.nimages, 1)
            for detector in plan.detectors:
                seq = seq_base + 2 * index + snap
                agenda.add(snap_end, partial(upload_raw, settings, plan, body, snap, detector, seq, producer, client))

    return send_event


def upload_raw(
    settings: Settings, plan: NightPlan, body: dict[str, Any], snap: int, detector: int, seq: int,
    producer: Any, client: Any, *, corrupt: bool = False, sidecar: bool = True,
) -> str:  # fmt: skip
    """Upload one raw + sidecar (+ truth) and publish both notifications; return the raw key. ``corrupt``
    writes garbage for the image; ``sidecar=False`` leaves the sidecar out (a camera fault)."""
    instrument, group = plan.instrument, body["groupId"]
    night = day_obs(body["startTime"] - TAI_MINUS_UTC_S)
    obs = layout.obs_id(instrument, night, seq)
    key = layout.raw_key(instrument, night, obs, detector)
    scene = raw_scene(instrument, detector, body, plan.shape_px, rng_seed=plan.seed)
    image, truth = raw_image(instrument=instrument.name, detector=detector, stars=scene.stars, group_id=group,
                             snap=snap, shape_px=plan.shape_px, n_transients=plan.n_transients, rng_seed=plan.seed,
                             seeing_fwhm_px=scene.seeing_fwhm_px)  # fmt: skip
    header = raw_header(instrument, body, detector, seq, snap, shape_px=plan.shape_px)
    data = b"SIMPLE  = garbage" if corrupt else to_fits_bytes(image, header)
    raw_bucket = settings.s3.raw_bucket
    s3.put_bytes(client, raw_bucket, key, data)
    sidecar_key = key.removesuffix(".fits") + ".json"
    if sidecar:
        s3.put_bytes(client, raw_bucket, sidecar_key, json.dumps(header).encode(), "application/json")
    truth_rows = [{"id": t.transient_id, "x_px": t.x_px, "y_px": t.y_px, "flux_e": t.flux_e,
                   "ra_deg": float(ra), "dec_deg": float(dec)}
                  for t in truth for ra, dec in [scene.true_wcs.pixel_to_world_values(t.x_px, t.y_px)]]  # fmt: skip
    s3.put_bytes(client, settings.s3.truth_bucket, layout.truth_key(instrument.name, group, detector),
                 json.dumps(truth_rows).encode(), "application/json")  # fmt: skip
    for object_key in (key, sidecar_key) if sidecar else (key,):
        notification = s3_notification(raw_bucket, object_key)
        producer.produce(settings.kafka.raw_notifications_topic, json.dumps(notification).encode())
    producer.poll(0)
    return key


def raw_header(
    instrument: Instrument, body: Mapping[str, Any], detector: int, seq: int, snap: int = 0,
    shape_px: tuple[int, int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The cards the camera writes in a raw and its sidecar (``butler.records`` reads them), for snap ``snap``
    of the visit whose NextVisit is ``body`` (as sent: JSON values); with ``shape_px``, also the WCS the
    telescope believes (the NextVisit's pointing: the true one differs by the pointing error)."""
    night = day_obs(body["startTime"] - TAI_MINUS_UTC_S)
    snaps = max(body["nimages"], 1)
    begin = astropy.time.Time(body["startTime"] + snap * body["duration"] / snaps, format="unix_tai")
    (ra, dec), angle = body["position"], body["cameraAngle"]
    cards: dict[str, Any] = {
        "INSTRUME": instrument.name, "DETECTOR": detector, "GROUPID": body["groupId"],
        "OBSID": layout.obs_id(instrument, night, seq), "DAYOBS": int(night), "SEQNUM": seq, "CURINDEX": snap + 1,
        "FILTER": body["filters"], "EXPTIME": body["duration"] / snaps, "DATE-BEG": begin.isot, "RA": ra,
        "DEC": dec, "ROTPA": angle, "PROGRAM": body["survey"],
    }  # fmt: skip
    if shape_px is not None:
        cards |= dict(sky.detector_wcs(instrument, detector, ra, dec, angle, shape_px).to_header())
    return cards


def s3_notification(bucket: str, key: str) -> dict[str, Any]:
    """The S3 event JSON an ``ObjectCreated:Put`` produces (the fields the router reads)."""
    now = datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventTime": now,
                         "eventName": "ObjectCreated:Put",
                         "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]}  # fmt: skip

