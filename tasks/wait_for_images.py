"""wait_for_images: the raw image(s) of one visit-detector, as soon as they land."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.adapters import s3
from prompt_processing.model import naming
from prompt_processing.model.errors import ImageTimeout, RetriableError
from prompt_processing.model.events import TAI_MINUS_UTC_S
from tasks.common import step

_BLPOP_SLICE_S = 1.0  # so a stopping activator notices within a second


@dataclass(frozen=True)
class RawImages:
    images: list[bytes]  # one per snap, in snap order
    landed_at: list[str]  # when each landed (S3 event time)
    waited_s: float  # time blocked waiting for arrivals


@step("wait_for_images")
def wait_for_images(
    ctx: ProcessingContext, clock: StepClock, instrument: str, group: str, detector: int,
    nimages: int, start_time_tai: float, duration_s: float,
) -> RawImages:  # fmt: skip
    """Presence first (landed before we looked), then a blocking wait on the router's arrival
    list, then a final re-check; then download. The wait ends ``2 * duration + image_timeout_s``
    after the shutter opens: ImageTimeout (non-retriable) names the visit, detector and snap. A
    visit picked up after that (a late delivery, a rerun the next morning) is checked once and
    fails at once if its image never landed. Redis or S3 failures are RetriableError.
    """
    timeout_s = 2 * duration_s + ctx.settings.visit.image_timeout_s
    deadline = start_time_tai - TAI_MINUS_UTC_S + timeout_s
    images, landed, waited_s = [], [], 0.0
    for snap in range(max(nimages, 1)):
        started = time.perf_counter()
        with clock.timing("wait"):
            found = _await_presence(ctx, instrument, group, snap, detector, deadline)
        waited_s += time.perf_counter() - started
        if found is None:
            raise ImageTimeout(
                f"no raw image for {instrument} visit {group} detector {detector} snap {snap} "
                f"within {timeout_s:.0f} s of the shutter opening"
            )
        with clock.timing("download"):
            images.append(s3.get_bytes(ctx.s3, found["bucket"], found["key"]))
        landed.append(found["landed_at"])
    return RawImages(images=images, landed_at=landed, waited_s=waited_s)


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
            ctx.redis.blpop([arrivals], timeout=min(remaining_s, _BLPOP_SLICE_S))
    except redis.RedisError as exc:
        raise RetriableError(f"redis while waiting for {presence}: {exc}") from exc
