"""The alerts ledger: which alerts went out, kept in the APDB's database beside its tables.

Two tables, made by ``pp apdb init`` and on first use (idempotent):

* ``pp_alert_sent``: one row per alert Kafka confirmed (its key, the DiaSource id as text), with
  the visit and detector and when.
* ``pp_visit_done``: one row per visit-detector whose alerts were all confirmed, with how many.
* ``pp_visit_final``: one row per visit-detector with a final outcome (succeeded or failed), with the
  reason, keyed by instrument, group and detector: known before anything is loaded or waited for (a
  failure can come before the raws give a visit id).

Guarantee (with ``tasks.publish``): an alert whose row is here is never sent again, whatever
happens to Redis or to the worker; a visit-detector whose row is in ``pp_visit_done`` is done, and
one whose row is in ``pp_visit_final`` is not processed again by an activator (a redelivery after a
lost acknowledgement, a re-fan after Redis lost its stream), only by a rerun by hand.
Rows are written after Kafka confirmed the alerts, so the only window in which an alert can be
sent twice is a worker dying between Kafka's confirmation and this insert (milliseconds); the
APDB's own transaction and this ledger live in the same database, durable as it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from sqlalchemy.dialects import postgresql, sqlite


@dataclass(frozen=True)
class Done:
    """A visit-detector whose alerts were all confirmed."""

    n_alerts: int
    sent_at: float
    processed_by: str


@dataclass(frozen=True)
class Final:
    """A visit-detector's final outcome: ``succeeded`` (its alerts all confirmed) or ``failed``."""

    status: str
    reason: str
    error: str
    n_alerts: int
    landed_at: str  # the last raw's S3 event time (ISO), "" if none landed: the latency of a redelivery
    finished_at: float  # unix s: when its alerts were confirmed (succeeded) or it failed
    processed_by: str


REASON_CHARS = 2000  # an outcome's reason is kept to this length


class AlertLedger:
    """The ledger in the database at ``db_url`` (the APDB's; its own small connection pool), its tables
    made if missing (``drop``: made anew, empty)."""

    def __init__(self, db_url: str, namespace: str | None, *, drop: bool = False) -> None:
        self._engine = sqlalchemy.create_engine(db_url, pool_pre_ping=True)
        metadata = sqlalchemy.MetaData(schema=namespace)
        self.sent = sqlalchemy.Table(
            "pp_alert_sent", metadata,
            sqlalchemy.Column("alert_key", sqlalchemy.String(64), primary_key=True),
            sqlalchemy.Column("visit", sqlalchemy.BigInteger, nullable=False, index=True),
            sqlalchemy.Column("detector", sqlalchemy.Integer, nullable=False),
            sqlalchemy.Column("sent_at", sqlalchemy.Float, nullable=False),
        )  # fmt: skip
        self.done_table = sqlalchemy.Table(
            "pp_visit_done", metadata,
            sqlalchemy.Column("visit", sqlalchemy.BigInteger, primary_key=True),
            sqlalchemy.Column("detector", sqlalchemy.Integer, primary_key=True),
            sqlalchemy.Column("n_alerts", sqlalchemy.Integer, nullable=False),
            sqlalchemy.Column("sent_at", sqlalchemy.Float, nullable=False),
            sqlalchemy.Column("processed_by", sqlalchemy.String(200), nullable=False),
        )  # fmt: skip
        self.final_table = sqlalchemy.Table(
            "pp_visit_final", metadata,
            sqlalchemy.Column("instrument", sqlalchemy.String(32), primary_key=True),
            sqlalchemy.Column("group_id", sqlalchemy.String(64), primary_key=True),
            sqlalchemy.Column("detector", sqlalchemy.Integer, primary_key=True),
            sqlalchemy.Column("status", sqlalchemy.String(16), nullable=False),
            sqlalchemy.Column("reason", sqlalchemy.Text, nullable=False),
            sqlalchemy.Column("error", sqlalchemy.String(200), nullable=False),
            sqlalchemy.Column("n_alerts", sqlalchemy.Integer, nullable=False),
            sqlalchemy.Column("landed_at", sqlalchemy.String(40), nullable=False),
            sqlalchemy.Column("finished_at", sqlalchemy.Float, nullable=False),
            sqlalchemy.Column("processed_by", sqlalchemy.String(200), nullable=False),
        )  # fmt: skip
        if drop:
            metadata.drop_all(self._engine, checkfirst=True)
        metadata.create_all(self._engine, checkfirst=True)

    def sent_keys(self, visit: int, detector: int) -> set[str]:
        """The keys of this visit-detector's alerts already confirmed."""
        where = (self.sent.c.visit == visit, self.sent.c.detector == detector)
        query = sqlalchemy.select(self.sent.c.alert_key).where(*where)
        with self._engine.connect() as connection:
            return {str(row[0]) for row in connection.execute(query)}

    def done(self, visit: int, detector: int) -> Done | None:
        """The visit-detector's completion record, if its alerts were all confirmed."""
        t = self.done_table
        where = (t.c.visit == visit, t.c.detector == detector)
        query = sqlalchemy.select(t.c.n_alerts, t.c.sent_at, t.c.processed_by).where(*where)
        with self._engine.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else Done(int(row[0]), float(row[1]), str(row[2]))

    def record(
        self, visit: int, detector: int, keys: list[str], *, complete: bool, n_alerts: int, processed_by: str
    ) -> None:
        """Record ``keys`` as confirmed and, if ``complete``, the visit-detector as done: one transaction,
        idempotent (a key or a visit-detector recorded before stays as it was)."""
        now = time.time()
        with self._engine.begin() as connection:
            if keys:
                rows = [{"alert_key": k, "visit": visit, "detector": detector, "sent_at": now} for k in keys]
                connection.execute(self._insert_ignoring(self.sent), rows)
            if complete:
                row = {"visit": visit, "detector": detector, "n_alerts": n_alerts, "sent_at": now,
                       "processed_by": processed_by}  # fmt: skip
                connection.execute(self._insert_ignoring(self.done_table), [row])

    def final(self, instrument: str, group: str, detector: int) -> Final | None:
        """The visit-detector's final outcome, if one was recorded."""
        t = self.final_table
        where = (t.c.instrument == instrument, t.c.group_id == group, t.c.detector == detector)
        columns = (t.c.status, t.c.reason, t.c.error, t.c.n_alerts, t.c.landed_at, t.c.finished_at, t.c.processed_by)
        with self._engine.connect() as connection:
            row = connection.execute(sqlalchemy.select(*columns).where(*where)).first()
        if row is None:
            return None
        return Final(str(row[0]), str(row[1]), str(row[2]), int(row[3]), str(row[4]), float(row[5]), str(row[6]))

    def record_final(self, instrument: str, group: str, detector: int, outcome: Final) -> None:
        """Record a final outcome; the latest replaces an earlier one (a rerun's)."""
        t = self.final_table
        key = {"instrument": instrument, "group_id": group, "detector": detector}
        row = key | {"status": outcome.status, "reason": outcome.reason[:REASON_CHARS], "error": outcome.error[:200],
                     "n_alerts": outcome.n_alerts, "landed_at": outcome.landed_at[:40],
                     "finished_at": outcome.finished_at, "processed_by": outcome.processed_by[:200]}  # fmt: skip
        with self._engine.begin() as connection:
            connection.execute(t.delete().where(*(t.c[name] == value for name, value in key.items())))
            connection.execute(t.insert(), [row])

    def close(self) -> None:
        self._engine.dispose()

    def _insert_ignoring(self, table: sqlalchemy.Table) -> Any:
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table).on_conflict_do_nothing()
