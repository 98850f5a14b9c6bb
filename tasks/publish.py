"""publish: outputs into the central datastore, a pp-output event for the Butler writer, the DiaObjects
and DiaSources into the APDB, one alert per DiaSource. Marks the visit-detector's alerts sent."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.apdb.db import OUTAGES as APDB_OUTAGES
from prompt_processing.butler import repo
from prompt_processing.imaging.algorithms import ProcessResult
from prompt_processing.imaging.catalogue import catalogue_to_arrow
from prompt_processing.model import naming
from prompt_processing.model.errors import RetriableError
from prompt_processing.model.events import NextVisit
from tasks.associate import Associated
from tasks.common import step
from tasks.wait_for_images import RawImages


@dataclass(frozen=True)
class Published:
    n_alerts: int
    sent_at_utc: float
    outputs: list[str]  # URIs of the exported files in the central datastore
    run: str  # the central repository RUN they went to


@step("publish")
def publish(
    ctx: ProcessingContext, clock: StepClock, visit: NextVisit, detector: int, raws: RawImages, result: ProcessResult,
    associated: Associated,
) -> Published:
    """Outputs into the local Butler, then into the central datastore (``LocalRepo.export``), then the
    DiaObjects and DiaSources into the APDB (one transaction; skipped if the APDB has this visit-detector),
    then the ``pp-output`` event for the Butler writer and the alerts (all confirmed by Kafka), then the
    alerts-sent marker. RetriableError if the Butler, S3, the APDB or Kafka fail (nothing is marked sent
    then); a retry of the same attempt exports the same datasets (same ids), so the writer ingests them
    once, and sends the same alerts (same keys)."""
    with clock.timing("publish"):
        group, instrument = visit.groupId, visit.instrument
        local = ctx.local_repo(instrument)
        run = repo.output_run(instrument, visit.day_obs(), group, ctx.attempt)
        outputs = {
            repo.VISIT_IMAGE: result.calexp,
            repo.SOURCES: catalogue_to_arrow(result.sources),
            repo.DIA_SOURCES: catalogue_to_arrow(result.dia_sources),
            repo.METADATA: {"background_rms_e": result.background_rms_e, "timings_s": result.timings_s,
                            "group": group, "processed_by": ctx.name},
        }  # fmt: skip
        try:
            refs = local.write_outputs(run, raws.visit_id, detector, outputs)
            event = local.export(refs, raws.records, instrument=instrument, group=group, detector=detector, run=run)
        except repo.OUTAGES as exc:
            raise RetriableError(f"Butler export of {instrument} {group} det{detector:03d}: {exc}") from exc
        _store(ctx, associated, detector)
        k = ctx.settings.kafka
        errors: list[Any] = []
        on_delivery = _collect(errors)
        ctx.producer.produce(k.butler_writer_topic, event.to_json(), key=f"{group}-{detector}", on_delivery=on_delivery)
        headers = alert_headers(instrument, group, detector, associated.schema_id)
        for key, payload in associated.alerts:
            ctx.producer.produce(k.alerts_topic, payload, key=key, headers=headers, on_delivery=on_delivery)
        if ctx.producer.flush(10.0) or errors:
            raise RetriableError(f"Kafka did not confirm outputs of {instrument} {group} det{detector:03d}: {errors}")
        sent_at = time.time()
        ctx.redis.set(
            naming.published_key(instrument, group, detector),
            json.dumps({"alerts": len(associated.alerts), "sent_at": sent_at, "processed_by": ctx.name, "run": run,
                        "visit": associated.visit_id}),
            ex=ctx.settings.visit.published_ttl_s,
        )  # fmt: skip
        uris = [str(local.central_root.join(path)) for path, _ in event.datasets]
        return Published(n_alerts=len(associated.alerts), sent_at_utc=sent_at, outputs=uris, run=run)


def alert_headers(instrument: str, group: str, detector: int, schema_id: int) -> list[tuple[str, str | bytes | None]]:
    """Kafka headers of an alert: where it came from, readable without decoding the Avro body."""
    return [("instrument", instrument.encode()), ("group", group.encode()), ("detector", str(detector).encode()),
            ("schema-id", str(schema_id).encode())]  # fmt: skip


def _store(ctx: ProcessingContext, associated: Associated, detector: int) -> None:
    """The DiaObjects and DiaSources into the APDB in one transaction, unless it already has them (a retry)."""
    if associated.objects is None or associated.sources is None:
        return
    try:
        if not ctx.apdb.containsVisitDetector(associated.visit_id, detector):
            ctx.apdb.store(associated.visit_time, associated.objects, associated.sources)
    except APDB_OUTAGES as exc:
        raise RetriableError(f"APDB store of visit {associated.visit_id} det{detector:03d}: {exc}") from exc


def _collect(errors: list[Any]) -> Callable[[Any, Any], None]:
    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    return on_delivery
