"""Ingest ``pp-output`` events into the central repository: batched, idempotent, one bad event alone.

``CentralWriter.ingest(events)`` writes a batch in one registry transaction: the runs are registered
first (idempotent, outside the transaction: a RUN cannot be made inside one), then the dimension
records, de-duplicated across the batch and inserted skipping existing ones, then the datasets,
ingested in place (the files are already in the datastore; ``transfer=None``) skipping dataset ids
that exist. Replaying any event therefore changes nothing.

If the batch fails, its events are tried one at a time, so one event that cannot be ingested (a
conflicting record, a file that is not there, a dataset type the repository does not have) is
rejected with its reason while the others go in. An outage (the database or the datastore not
answering) is raised, never rejected: the caller retries it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import sqlalchemy.exc
from lsst.daf.butler import Butler, DatasetType, DimensionRecord
from lsst.daf.butler._exceptions import MissingDatasetTypeError
from lsst.daf.butler._exceptions_legacy import DatasetTypeError
from lsst.daf.butler.registry import ConflictingDefinitionError

from prompt_processing.butler.output_event import BadOutputEvent, OutputEvent
from prompt_processing.model.failures import is_transient

log = logging.getLogger(__name__)



@dataclass
class IngestReport:
    """What one ``ingest`` call did. ``rejected`` holds (index in the batch, why) per event not ingested."""

    events: int = 0
    datasets: int = 0
    records: int = 0
    one_at_a_time: bool = False
    rejected: list[tuple[int, BadOutputEvent]] = field(default_factory=list)


class CentralWriter:
    """The central registry's only writer."""

    def __init__(self, butler: Butler) -> None:
        if not butler.isWriteable():
            raise ValueError("the Butler writer needs a writeable Butler")
        self.butler = butler
        self._runs: set[str] = set()
        self._types: dict[str, DatasetType] = {}

    def ingest(self, events: list[OutputEvent]) -> IngestReport:
        """Ingest ``events`` (see the module docstring); raises only on an outage (``model.failures.is_transient``)."""
        report = IngestReport()
        good: list[tuple[int, OutputEvent]] = []
        for index, event in enumerate(events):
            try:
                self._check_types(event)
                good.append((index, event))
            except BadOutputEvent as exc:
                report.rejected.append((index, exc))
        if not good:
            return report
        try:
            report.records = self._write([event for _, event in good])
            report.events, report.datasets = len(good), sum(len(e.datasets) for _, e in good)
            return report
        except Exception as exc:
            if is_transient(exc):
                raise
            if len(good) == 1:
                report.rejected.append((good[0][0], _rejection(exc)))
                return report
            log.warning("batch of %d events failed (%s: %s); ingesting one at a time", len(good),
                        type(exc).__name__, exc)  # fmt: skip
        report.one_at_a_time = True
        for index, event in good:
            try:
                report.records += self._write([event])
                report.events += 1
                report.datasets += len(event.datasets)
            except Exception as exc:
                if is_transient(exc):
                    raise
                report.rejected.append((index, _rejection(exc)))
        return report

    def _check_types(self, event: OutputEvent) -> None:
        for _, ref in event.datasets:
            name = ref.datasetType.name
            known = self._types.get(name)
            if known is None:
                try:
                    known = self._types[name] = self.butler.get_dataset_type(name)
                except MissingDatasetTypeError:
                    raise BadOutputEvent("unknown-dataset-type", f"the central repository has no dataset type "
                                         f"{name!r}") from None  # fmt: skip
            if not known.is_compatible_with(ref.datasetType):
                raise BadOutputEvent("unknown-dataset-type", f"dataset type {ref.datasetType} differs from the "
                                     f"central repository's {known}")  # fmt: skip

    def _write(self, events: list[OutputEvent]) -> int:
        """One transaction for ``events``; the number of distinct records given."""
        for run in set().union(*(event.runs for event in events)) - self._runs:
            self.butler.registry.registerRun(run)
            self._runs.add(run)
        by_element = _records_by_element([record for event in events for record in event.records])
        with self.butler.transaction():
            for element, records in by_element.items():
                self.butler.registry.insertDimensionData(element, *records, skip_existing=True)
            datasets = [dataset for event in events for dataset in event.file_datasets()]
            self.butler.ingest(*datasets, transfer=None, skip_existing=True)
        return sum(len(records) for records in by_element.values())


def _records_by_element(records: list[DimensionRecord]) -> dict[str, list[DimensionRecord]]:
    """Distinct records per element, elements in the order first seen (events list them parents first)."""
    out: dict[str, dict[object, DimensionRecord]] = {}
    for record in records:
        out.setdefault(record.definition.name, {}).setdefault(record.dataId.required_values, record)
    return {element: list(unique.values()) for element, unique in out.items()}


_KINDS: list[tuple[type[Exception] | tuple[type[Exception], ...], str]] = [
    (FileNotFoundError, "missing-file"),
    ((ConflictingDefinitionError, sqlalchemy.exc.IntegrityError), "conflict"),
    ((DatasetTypeError, MissingDatasetTypeError), "unknown-dataset-type"),
]


def _rejection(exc: Exception) -> BadOutputEvent:
    kind = next((k for types, k in _KINDS if isinstance(exc, types)), "ingest-error")
    return BadOutputEvent(kind, f"{type(exc).__name__}: {exc!s:.500}")

