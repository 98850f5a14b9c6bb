"""Summit simulator: realistic NextVisit events on the ``next-visit`` topic.

``plan_visits`` is pure (seeded): a survey-like walk over the southern sky with filter
changes, 1 or 2 snaps, and the summit's bookkeeping fields. ``send_visits`` stamps each
event as it is sent (``startTime`` = send time + ``lead_s``, never less than 20 s ahead)
and produces it, with a progress bar.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.progress import Progress

from prompt_processing.adapters import kafka
from prompt_processing.model.events import TAI_MINUS_UTC_S, CoordinateSystem, Dome, NextVisit, RotationSystem
from prompt_processing.model.instruments import Instrument
from prompt_processing.settings import KafkaSettings

MIN_LEAD_S = 20.0
SURVEYS = ("BLOCK-365", "BLOCK-T246", "LSST-WFD", "LSST-DDF-COSMOS")


@dataclass(frozen=True)
class PlannedVisit:
    """Everything about a visit that does not depend on when it is sent."""

    ra_deg: float
    dec_deg: float
    camera_angle_deg: float
    filters: str
    nimages: int
    duration_s: float
    survey: str


def plan_visits(instrument: Instrument, n_visits: int, *, seed: int = 0) -> list[PlannedVisit]:
    """``n_visits`` pointings along a survey stripe: small steps in RA, occasional filter change."""
    rng = random.Random(seed)
    ra, dec = rng.uniform(0, 360), rng.uniform(-70, 5)
    band = rng.choice(instrument.filters)
    survey = rng.choice(SURVEYS)
    visits = []
    for _ in range(n_visits):
        if rng.random() < 0.1:
            band = rng.choice(instrument.filters)
        if rng.random() < 0.05:
            survey = rng.choice(SURVEYS)
        ra = (ra + rng.uniform(2.5, 3.5)) % 360
        dec = min(max(dec + rng.gauss(0, 0.5), -89.0), 30.0)
        nimages = rng.choice((1, 1, 1, 2))
        visits.append(
            PlannedVisit(
                ra_deg=round(ra, 6), dec_deg=round(dec, 6),
                camera_angle_deg=round(rng.uniform(-90, 90), 3),
                filters=band, nimages=nimages, duration_s=30.0, survey=survey,
            )
        )  # fmt: skip
    return visits


def group_id_for(start_tai_s: float) -> str:
    """The summit's groupId style: the visit's UTC start time, ISO format, millisecond precision."""
    start = datetime.fromtimestamp(start_tai_s - TAI_MINUS_UTC_S, tz=UTC)
    return start.strftime("%Y-%m-%dT%H:%M:%S.") + f"{start.microsecond // 1000:03d}"


def next_visit_message(
    instrument: Instrument, plan: PlannedVisit, *, now_utc_s: float, lead_s: float, seq_num: int
) -> dict[str, Any]:
    """The JSON body of one NextVisit event sent at ``now_utc_s``; validated against the model."""
    if lead_s < MIN_LEAD_S:
        raise ValueError(f"lead_s must be >= {MIN_LEAD_S} s (the summit's promise), got {lead_s}")
    now_tai = now_utc_s + TAI_MINUS_UTC_S
    start_tai = now_tai + lead_s
    body: dict[str, Any] = {
        "salIndex": 1 if instrument.name == "LSSTCam" else 2,
        "scriptSalIndex": 100_000 + seq_num,
        "instrument": instrument.name,
        "groupId": group_id_for(start_tai),
        "coordinateSystem": int(CoordinateSystem.ICRS),
        "position": [plan.ra_deg, plan.dec_deg],
        "startTime": start_tai,
        "rotationSystem": int(RotationSystem.SKY),
        "cameraAngle": plan.camera_angle_deg,
        "filters": plan.filters,
        "dome": int(Dome.OPEN),
        "duration": plan.duration_s,
        "nimages": plan.nimages,
        "survey": plan.survey,
        "totalCheckpoints": 0,
        "private_sndStamp": now_tai,
        "private_efdStamp": now_utc_s,
        "private_kafkaStamp": now_tai,
        "private_rcvStamp": now_tai,
        "private_seqNum": seq_num,
        "private_identity": "ScriptQueue",
        "private_origin": 4242,
        "private_revCode": "c3b5a7e1",
    }
    NextVisit.model_validate_json(json.dumps(body))  # the simulator never emits what we would reject
    return body


def send_visits(
    kafka_settings: KafkaSettings,
    instrument: Instrument,
    n_visits: int,
    *,
    cadence_s: float,
    lead_s: float = 25.0,
    seed: int = 0,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Produce ``n_visits`` events ``cadence_s`` apart; return the bodies sent, in order."""
    producer = kafka.make_producer(kafka_settings)
    sent = []
    with Progress(disable=not show_progress) as progress:
        task = progress.add_task(f"next-visit {instrument.name}", total=n_visits)
        for seq, plan in _paced(plan_visits(instrument, n_visits, seed=seed), cadence_s):
            body = next_visit_message(instrument, plan, now_utc_s=time.time(), lead_s=lead_s, seq_num=seq)
            producer.produce(kafka_settings.next_visit_topic, json.dumps(body).encode(), key=body["groupId"])
            producer.poll(0)
            sent.append(body)
            progress.advance(task)
    if producer.flush(30.0):
        raise RuntimeError("Kafka did not confirm every next-visit event within 30 s")
    return sent


def _paced(plans: list[PlannedVisit], cadence_s: float) -> Iterator[tuple[int, PlannedVisit]]:
    """Yield plans one ``cadence_s`` apart on a fixed schedule (no drift)."""
    start = time.monotonic()
    for seq, plan in enumerate(plans):
        delay_s = start + seq * cadence_s - time.monotonic()
        if delay_s > 0:
            time.sleep(delay_s)
        yield seq, plan
