"""publish: outputs into the central datastore, a pp-output event for the Butler writer, one alert
per transient. Marks the visit-detector published so it is never alerted twice."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.butler import repo
from prompt_processing.imaging.algorithms import ProcessResult
from prompt_processing.imaging.catalogue import catalogue_to_arrow
from prompt_processing.model import naming
from prompt_processing.model.errors import RetriableError
from prompt_processing.model.events import NextVisit
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
    ctx: ProcessingContext, clock: StepClock, visit: NextVisit, detector: int, raws: RawImages, result: ProcessResult
) -> Published:
    """Outputs into the local Butler, then into the central datastore (``LocalRepo.export``), then the
    ``pp-output`` event for the Butler writer and the alerts (both confirmed by Kafka), then the published
    marker. RetriableError if the Butler, S3 or Kafka fail (nothing is marked published then); a retry
    of the same attempt exports the same datasets (same ids), so the writer ingests them once."""
    with clock.timing("publish"):
        group, instrument = visit.groupId, visit.instrument
        local = ctx.local_repo(instrument)
        dia = catalogue_to_arrow(result.dia_sources)
        run = repo.output_run(instrument, visit.day_obs(), group, ctx.attempt)
        outputs = {
            repo.VISIT_IMAGE: result.calexp,
            repo.SOURCES: catalogue_to_arrow(result.sources),
            repo.DIA_SOURCES: dia,
            repo.METADATA: {"background_rms_e": result.background_rms_e, "timings_s": result.timings_s,
                            "group": group, "processed_by": ctx.name},
        }  # fmt: skip
        try:
            refs = local.write_outputs(run, raws.visit_id, detector, outputs)
            event = local.export(refs, raws.records, instrument=instrument, group=group, detector=detector, run=run)
        except repo.OUTAGES as exc:
            raise RetriableError(f"Butler export of {instrument} {group} det{detector:03d}: {exc}") from exc
        k = ctx.settings.kafka
        errors: list[Any] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        ctx.producer.produce(k.butler_writer_topic, event.to_json(), key=f"{group}-{detector}", on_delivery=on_delivery)
        alerts = [_alert(visit, detector, i, row) for i, row in enumerate(dia.to_pylist())]
        for alert in alerts:
            payload = json.dumps(alert).encode()
            ctx.producer.produce(k.alerts_topic, payload, key=alert["alertId"], on_delivery=on_delivery)
        if ctx.producer.flush(10.0) or errors:
            raise RetriableError(f"Kafka did not confirm outputs of {instrument} {group} det{detector:03d}: {errors}")
        sent_at = time.time()
        ctx.redis.set(
            naming.published_key(instrument, group, detector),
            json.dumps({"alerts": len(alerts), "sent_at": sent_at, "processed_by": ctx.name, "run": run}),
            ex=ctx.settings.visit.published_ttl_s,
        )
        uris = [str(local.central_root.join(path)) for path, _ in event.datasets]
        return Published(n_alerts=len(alerts), sent_at_utc=sent_at, outputs=uris, run=run)


def _alert(visit: NextVisit, detector: int, index: int, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "alertId": f"{visit.instrument}-{visit.groupId}-{detector:03d}-{index:04d}",
        "instrument": visit.instrument,
        "groupId": visit.groupId,
        "detector": detector,
        "visitPosition": list(visit.position),
        "filter": visit.filters,
        "diaSource": source,
    }
