"""publish: outputs to the outputs bucket, a pp-output event for the Butler writer, one alert
per transient. Marks the visit-detector published so it is never alerted twice."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from prompt_processing.activator.context import ProcessingContext, StepClock
from prompt_processing.adapters import s3
from prompt_processing.imaging.algorithms import ProcessResult
from prompt_processing.imaging.catalogue import catalogue_to_arrow
from prompt_processing.imaging.fits_io import to_fits_bytes
from prompt_processing.model import layout, naming
from prompt_processing.model.errors import RetriableError
from prompt_processing.model.events import NextVisit
from tasks.common import step


@dataclass(frozen=True)
class Published:
    n_alerts: int
    sent_at_utc: float
    outputs: list[str]


@step("publish")
def publish(
    ctx: ProcessingContext, clock: StepClock, visit: NextVisit, detector: int, result: ProcessResult
) -> Published:
    """Write outputs, then the Butler-writer event and the alerts (confirmed by Kafka), then the
    published marker. RetriableError if S3 or Kafka fail (nothing is marked published then)."""
    with clock.timing("publish"):
        group, instrument = visit.groupId, visit.instrument
        prefix = layout.output_prefix(instrument, group, detector)
        bucket = ctx.settings.s3.outputs_bucket
        dia = catalogue_to_arrow(result.dia_sources)
        files = {
            "calexp.fits": to_fits_bytes(result.calexp, {"GROUPID": group, "DETECTOR": detector}),
            "sources.parquet": _parquet(catalogue_to_arrow(result.sources)),
            "dia_sources.parquet": _parquet(dia),
        }
        puts = [ctx.uploads.submit(s3.put_bytes, ctx.s3, bucket, prefix + name, data) for name, data in files.items()]
        for put in puts:
            put.result()  # re-raises RetriableError
        outputs = [f"s3://{bucket}/{prefix}{name}" for name in files]
        k = ctx.settings.kafka
        errors: list[Any] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        ctx.producer.produce(k.butler_writer_topic, json.dumps(_butler_event(visit, detector, outputs)).encode(),
                             key=f"{group}-{detector}", on_delivery=on_delivery)  # fmt: skip
        alerts = [_alert(visit, detector, i, row) for i, row in enumerate(dia.to_pylist())]
        for alert in alerts:
            payload = json.dumps(alert).encode()
            ctx.producer.produce(k.alerts_topic, payload, key=alert["alertId"], on_delivery=on_delivery)
        if ctx.producer.flush(10.0) or errors:
            raise RetriableError(f"Kafka did not confirm outputs of {instrument} {group} det{detector:03d}: {errors}")
        sent_at = time.time()
        ctx.redis.set(
            naming.published_key(instrument, group, detector),
            json.dumps({"alerts": len(alerts), "sent_at": sent_at, "processed_by": ctx.name}),
            ex=ctx.settings.visit.published_ttl_s,
        )
        return Published(n_alerts=len(alerts), sent_at_utc=sent_at, outputs=outputs)


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _butler_event(visit: NextVisit, detector: int, outputs: list[str]) -> dict[str, Any]:
    data_id = {"instrument": visit.instrument, "group": visit.groupId, "detector": detector}
    return {
        "type": "pp-output",
        "dimension_records": [{"element": "group", "record": {"instrument": visit.instrument, "name": visit.groupId}}],
        "datasets": [
            {"datasetType": uri.rsplit("/", 1)[1].split(".")[0], "dataId": data_id, "uri": uri} for uri in outputs
        ],
    }


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
