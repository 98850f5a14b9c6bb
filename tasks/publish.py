"""publish: outputs into the central datastore, a pp-output event for the Butler writer, the DiaObjects
and DiaSources into the APDB, one alert per DiaSource. Marks the visit-detector's alerts sent."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import astropy.time

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.apdb.db import OUTAGES as APDB_OUTAGES
from prompt_processing.butler import repo
from prompt_processing.butler.local import LocalRepo
from prompt_processing.model import naming
from prompt_processing.model.errors import RetriableError
from prompt_processing.model.events import NextVisit
from tasks.apdb_state import ApdbState
from tasks.common import step
from tasks.process import Processed
from tasks.wait_for_images import RawImages


@dataclass(frozen=True)
class Published:
    n_alerts: int
    sent_at_utc: float
    outputs: list[str]  # URIs of the exported files in the central datastore
    run: str  # the central repository RUN they went to


@step("publish")
def publish(
    ctx: ProcessingContext, clock: StepClock, visit: NextVisit, detector: int, raws: RawImages, processed: Processed,
    state: ApdbState,
) -> Published:
    """The pipeline's outputs (and a metadata record of what ran) into the central datastore
    (``LocalRepo.export``), then the DiaObjects and DiaSources into the APDB (one transaction; only for a
    visit-detector the APDB does not hold), then the ``pp-output`` event for the Butler writer and the
    alerts (all confirmed by Kafka), then the alerts-sent marker. A forced rerun of one whose alerts were
    sent (``ApdbState.SENT``) sends none. RetriableError if the Butler, S3, the APDB or Kafka fail (nothing
    is marked sent then); a retry exports the same datasets (same ids), so the writer ingests them once,
    and sends the same alerts (same keys)."""
    with clock.timing("publish"):
        group, instrument = visit.groupId, visit.instrument
        local = ctx.local_repo(instrument)
        metadata = {"pipeline": processed.pipeline, "not_built": [f"{n}: {why}" for n, why in processed.tried],
                    "timings_s": processed.timings_s, "group": group, "processed_by": ctx.name}  # fmt: skip
        try:
            refs = local.write_outputs(processed.run, raws.visit_id, detector, {repo.METADATA: metadata})
            refs += [processed.outputs[name] for name in repo.OUTPUT_TYPES if name in processed.outputs]
            event = local.export(refs, raws.records, instrument=instrument, group=group, detector=detector,
                                 run=processed.run)  # fmt: skip
            alerts = [] if state is ApdbState.SENT else _alerts(local, processed)
            if state is ApdbState.NEW:
                _store(ctx, local, processed, raws.visit_id, detector)
        except repo.OUTAGES as exc:
            raise RetriableError(f"Butler export of {instrument} {group} det{detector:03d}: {exc}") from exc
        k = ctx.settings.kafka
        errors: list[Any] = []
        on_delivery = _collect(errors)
        ctx.producer.produce(k.butler_writer_topic, event.to_json(), key=f"{group}-{detector}", on_delivery=on_delivery)
        headers = alert_headers(instrument, group, detector, ctx.alert_schema.schema_id)
        for key, payload in alerts:
            ctx.producer.produce(k.alerts_topic, payload, key=key, headers=headers, on_delivery=on_delivery)
        if ctx.producer.flush(10.0) or errors:
            raise RetriableError(f"Kafka did not confirm outputs of {instrument} {group} det{detector:03d}: {errors}")
        sent_at = time.time()
        if state is not ApdbState.SENT:
            ctx.redis.set(
                naming.published_key(instrument, group, detector),
                json.dumps({"alerts": len(alerts), "sent_at": sent_at, "processed_by": ctx.name, "run": processed.run,
                            "visit": raws.visit_id}),
                ex=ctx.settings.visit.published_ttl_s,
            )  # fmt: skip
        uris = [str(local.central_root.join(path)) for path, _ in event.datasets]
        return Published(n_alerts=len(alerts), sent_at_utc=sent_at, outputs=uris, run=processed.run)


def alert_headers(instrument: str, group: str, detector: int, schema_id: int) -> list[tuple[str, str | bytes | None]]:
    """Kafka headers of an alert: where it came from, readable without decoding the Avro body."""
    return [("instrument", instrument.encode()), ("group", group.encode()), ("detector", str(detector).encode()),
            ("schema-id", str(schema_id).encode())]  # fmt: skip


def _alerts(local: LocalRepo, processed: Processed) -> list[tuple[str, bytes]]:
    """The framed alerts the pipeline packaged (none if it was a fallback without DIA sources)."""
    ref = processed.outputs.get(repo.ALERTS)
    if ref is None:
        return []
    table = local.read(ref)
    return list(zip(table["key"].to_pylist(), table["payload"].to_pylist(), strict=True))


def _store(ctx: ProcessingContext, local: LocalRepo, processed: Processed, visit_id: int, detector: int) -> None:
    """The DiaObjects and DiaSources into the APDB in one transaction, unless it already has them (a retry)."""
    sources_ref, objects_ref = processed.outputs.get(repo.DIA_SOURCES), processed.outputs.get(repo.DIA_OBJECTS)
    if sources_ref is None or objects_ref is None or repo.ALERTS not in processed.outputs:
        return  # a fallback pipeline: no association
    try:
        if not ctx.apdb.containsVisitDetector(visit_id, detector):
            sources, objects = local.read(sources_ref).to_pandas(), local.read(objects_ref).to_pandas()
            midpoint = float(sources["midpointMjdTai"].iloc[0]) if len(sources) else None
            if midpoint is not None:
                ctx.apdb.store(astropy.time.Time(midpoint, format="mjd", scale="tai"), objects, sources)
    except APDB_OUTAGES as exc:
        raise RetriableError(f"APDB store of visit {visit_id} det{detector:03d}: {exc}") from exc


def _collect(errors: list[Any]) -> Callable[[Any, Any], None]:
    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    return on_delivery
