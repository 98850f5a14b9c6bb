"""publish: outputs into the central datastore, a pp-output event for the Butler writer, the DiaObjects
and DiaSources into the APDB, one alert per DiaSource, each recorded in the alerts ledger once confirmed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import astropy.time

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.butler import repo
from prompt_processing.butler.local import LocalRepo
from prompt_processing.model.errors import RetriableError
from prompt_processing.model.events import NextVisit
from prompt_processing.model.failures import transient_as_retriable
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
    alerts, each recorded in the alerts ledger once Kafka confirmed it (``_send``). A forced rerun of one
    whose alerts were all sent (``ApdbState.SENT``) sends none. RetriableError if the Butler, S3, the APDB
    or Kafka fail; a retry exports the same datasets (same ids), so the writer ingests them once, and sends
    only the alerts not confirmed. ``LeaseLost`` before any effect if another activator may own the entry."""
    with clock.timing("publish"):
        ctx.check_lease()
        group, instrument = visit.groupId, visit.instrument
        local = ctx.local_repo(instrument)
        metadata = {"pipeline": processed.pipeline, "not_built": [f"{n}: {why}" for n, why in processed.tried],
                    "timings_s": processed.timings_s, "group": group, "processed_by": ctx.name}  # fmt: skip
        with transient_as_retriable(f"Butler export of {instrument} {group} det{detector:03d}"):
            refs = local.write_outputs(processed.run, raws.visit_id, detector, {repo.METADATA: metadata})
            refs += [processed.outputs[name] for name in repo.OUTPUT_TYPES if name in processed.outputs]
            event = local.export(refs, raws.records, instrument=instrument, group=group, detector=detector,
                                 run=processed.run)  # fmt: skip
            alerts = [] if state is ApdbState.SENT else _alerts(local, processed)
        if state is ApdbState.NEW:
            _store(ctx, local, processed, raws.visit_id, detector)
        ctx.check_lease()
        headers = alert_headers(instrument, group, detector, ctx.alert_schema.schema_id)
        sent_at = _send(ctx, event.to_json(), f"{group}-{detector}", alerts, headers, raws.visit_id, detector)
        uris = [str(local.central_root.join(path)) for path, _ in event.datasets]
        return Published(n_alerts=len(alerts), sent_at_utc=sent_at, outputs=uris, run=processed.run)


def _send(
    ctx: ProcessingContext, event: bytes, event_key: str, alerts: list[tuple[str, bytes]], headers: list[Any],
    visit_id: int, detector: int,
) -> float:
    """The pp-output event and every alert the ledger does not hold, then their outcome into the ledger.

    Alerts at most once: an alert confirmed by Kafka is recorded in the ledger (and never produced
    again), one still in the producer's queue from an earlier try is waited for, not produced again
    (the wait lasts Kafka's delivery timeout, so a broker stall shorter than that resends nothing),
    and only one that failed is produced on the next try. Visits at least once: the visit-detector
    is recorded done only when all its alerts are confirmed; until then the step is retried.
    Returns when the last alert was confirmed (unix s).
    """
    k, deliveries, where = ctx.settings.kafka, ctx.alert_deliveries, f"visit {visit_id} det{detector:03d}"
    with transient_as_retriable(f"alerts ledger of {where}"):
        recorded = ctx.ledger.sent_keys(visit_id, detector)
    event_errors: list[Any] = []
    ctx.producer.produce(k.butler_writer_topic, event, key=event_key, on_delivery=_collect(event_errors))
    keys = [key for key, _ in alerts]
    for key, payload in alerts:
        if key not in recorded and not deliveries.in_hand(key):
            on_delivery = deliveries.produced(key)
            ctx.producer.produce(k.alerts_topic, payload, key=key, headers=headers, on_delivery=on_delivery)
    settled = deliveries.wait(ctx.producer, keys, timeout_s=k.delivery_timeout_s + 5)
    event_settled = ctx.producer.flush(k.delivery_timeout_s) == 0
    sent_at = time.time()
    confirmed = [key for key in keys if key not in recorded and deliveries.confirmed(key)]
    complete = settled and len(confirmed) + len(recorded & set(keys)) == len(keys)
    with transient_as_retriable(f"alerts ledger of {where}"):
        ctx.ledger.record(visit_id, detector, confirmed, complete=complete, n_alerts=len(keys), processed_by=ctx.name)
    deliveries.forget(confirmed)
    failed = deliveries.errors(keys)
    if not complete or not event_settled or event_errors:
        raise RetriableError(f"Kafka confirmed {len(confirmed) + len(recorded & set(keys))} of {len(keys)} alerts of "
                             f"{where} (failed: {len(failed)} {sorted(set(failed.values()))[:3]}; output event: "
                             f"{event_errors or ('confirmed' if event_settled else 'unconfirmed')}); only the "
                             f"unconfirmed ones are sent again")  # fmt: skip
    return sent_at


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
    with transient_as_retriable(f"APDB store of visit {visit_id} det{detector:03d}"):
        if not ctx.apdb.containsVisitDetector(visit_id, detector):
            sources, objects = local.read(sources_ref).to_pandas(), local.read(objects_ref).to_pandas()
            midpoint = float(sources["midpointMjdTai"].iloc[0]) if len(sources) else None
            if midpoint is not None:
                ctx.apdb.store(astropy.time.Time(midpoint, format="mjd", scale="tai"), objects, sources)


def _collect(errors: list[Any]) -> Callable[[Any, Any], None]:
    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    return on_delivery
