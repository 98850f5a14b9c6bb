"""``pp butler-writer``: the only writer of the central registry.

Consumes ``pp-output`` events from the ``butler-writer`` topic in batches (up to
``butler.writer_batch_size`` events, waiting at most ``butler.writer_max_wait_s`` to fill one once
the first arrived) and ingests each batch with ``butler.writer.CentralWriter``: one registry
transaction, records and datasets skipping what exists, one event at a time if the batch fails.

Guarantees, on top of ``KafkaService``'s:

* Offsets are committed only after the batch's transaction committed (or its events were
  dead-lettered, confirmed): a writer killed in between gets the batch again and ingests nothing
  twice (same dataset ids, skipped).
* An event that cannot be ingested (malformed, a dataset type the repository lacks, a missing file,
  a conflicting record) goes to ``kafka.butler_dead_letter_topic`` with its reason; the partition
  moves on. A registry or datastore outage is retried with backoff, never dead-lettered.
* SIGTERM finishes the batch in hand, commits, and exits within ``writer_shutdown_deadline_s``.

Each batch emits a ``pp.butler.batch-ingested`` Prefect event (counts, the runs it touched).
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from typing import Any

from confluent_kafka import Message
from lsst.daf.butler import Butler
from prefect.events import emit_event

from prompt_processing.adapters.redis_client import make_redis
from prompt_processing.butler import repo
from prompt_processing.butler.output_event import BadOutputEvent, OutputEvent
from prompt_processing.butler.writer import CentralWriter, IngestReport
from prompt_processing.services.kafka_service import KafkaService, MetricsEndpoint, ServiceConfig, Stopping
from prompt_processing.services.metrics import ButlerWriterMetrics
from prompt_processing.settings import Settings

log = logging.getLogger(__name__)

EVENT_NAME = "pp.butler.batch-ingested"


class ButlerWriterService(KafkaService):
    """The Butler writer process (see the module docstring). ``butler``: a writeable Butler on the
    central repository (default: opened from ``settings.butler``)."""

    def __init__(self, settings: Settings, butler: Butler | None = None) -> None:
        b, k = settings.butler, settings.kafka
        config = ServiceConfig(
            kind="butler-writer", name=b.writer_name or socket.gethostname(), group_id=b.writer_group_id,
            topic=k.butler_writer_topic, dead_letter_topic=k.butler_dead_letter_topic, batch_size=b.writer_batch_size,
            poll_timeout_s=0.5, health_ttl_s=b.writer_health_ttl_s, shutdown_deadline_s=b.writer_shutdown_deadline_s,
        )  # fmt: skip
        client = make_redis(settings.redis, settings.retry, name=f"butler-writer-{socket.gethostname()}")
        self.metrics = ButlerWriterMetrics()
        m = settings.metrics
        endpoint = MetricsEndpoint(self.metrics.registry, m.host, m.butler_writer_port) if m.enabled else None
        super().__init__(k, settings.retry, config, client, endpoint)
        self.settings = settings
        self.central = butler or repo.open_central(b, settings.s3, writeable=True)
        self.writer = CentralWriter(self.central)
        self.counts: Counter[str] = Counter()
        self.last_batch_s = 0.0

    def startup(self) -> None:
        super().startup()
        log.info("butler-writer %s: %s -> %s (batches of <= %d, <= %.1f s)", self.config.name, self.config.topic,
                 repo.central_uri(self.settings.butler), self.config.batch_size,
                 self.settings.butler.writer_max_wait_s)  # fmt: skip

    def poll(self) -> list[Message]:
        """One message (waiting up to ``poll_timeout_s``), then more until the batch is full or
        ``writer_max_wait_s`` passed since the first came."""
        messages = super().poll()
        if not messages:
            return messages
        deadline = time.monotonic() + self.settings.butler.writer_max_wait_s
        while len(messages) < self.config.batch_size and not self.should_exit:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            more = self._consumer.consume(num_messages=self.config.batch_size - len(messages), timeout=remaining_s)
            messages += [m for m in more if m.error() is None]
        return messages

    def tick(self) -> None:
        """Take a batch, ingest it, dead-letter what cannot be ingested, then commit the batch."""
        messages = self.poll()
        if messages:
            try:
                self._ingest(messages)
            except Stopping:
                log.info("stopping with a batch of %d unfinished; it will be redelivered", len(messages))
                return
            for message in messages:
                self._consumer.store_offsets(message=message)
            self.commit()
        self.refresh_health()

    def _ingest(self, messages: list[Message]) -> None:
        events: list[OutputEvent] = []
        parsed: list[Message] = []
        for message in messages:
            try:
                events.append(OutputEvent.from_json(message.value(), self.central.dimensions))
                parsed.append(message)
            except BadOutputEvent as exc:
                self._reject(message, exc)
        if not events:
            return
        started = time.perf_counter()
        report: IngestReport = self.retrying("butler", lambda: self.writer.ingest(events))
        self.last_batch_s = time.perf_counter() - started
        self.metrics.batch.observe(self.last_batch_s)
        for index, why in report.rejected:
            self._reject(parsed[index], why)
        self.counts.update(events=report.events, datasets=report.datasets, records=report.records, batches=1,
                           one_at_a_time=int(report.one_at_a_time))  # fmt: skip
        self.metrics.events.inc(report.events)
        self.metrics.datasets.inc(report.datasets)
        if report.events:
            self._emit(report, events)

    def _reject(self, message: Message, exc: BadOutputEvent) -> None:
        self.dead_letter(message, exc.kind, str(exc))
        self.metrics.dead_lettered.labels(exc.kind).inc()
        self.counts[f"dead_lettered_{exc.kind}"] += 1

    def _emit(self, report: IngestReport, events: list[OutputEvent]) -> None:
        runs = sorted(set().union(*(event.runs for event in events)))
        try:
            emit_event(
                event=EVENT_NAME,
                resource={"prefect.resource.id": f"pp.butler-writer.{self.config.name}",
                          "prefect.resource.name": self.config.name},
                payload={"events": report.events, "datasets": report.datasets, "records": report.records,
                         "rejected": len(report.rejected), "seconds": round(self.last_batch_s, 4), "runs": runs[:50]},
            )  # fmt: skip
        except Exception as exc:  # an event is a report: Prefect being away must not stop ingestion
            log.warning("could not emit %s: %s", EVENT_NAME, exc)

    def on_shutdown(self) -> None:
        self.central.close()

    def health(self) -> dict[str, Any]:
        return {**self.counts, "last_batch_s": round(self.last_batch_s, 4)}
