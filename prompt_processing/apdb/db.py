"""Creating and opening the APDB from ``ApdbSettings``.

The schema is the one ``lsst-sdm-schemas`` ships (``apdb.yaml``); the tables are made by
``ApdbSql.init_database``, which keeps what a database already holds, so ``init_apdb`` is safe to
run again; it also makes the alerts ledger's tables (``apdb.ledger``). Workers open it with the
same settings (``open_apdb``): a database that was never initialised is a clear ``ApdbMissing``,
not a SQL error in the middle of a visit.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy
from lsst.dax.apdb import Apdb
from lsst.dax.apdb.sql import ApdbSql, ApdbSqlConfig

from prompt_processing.apdb.ledger import AlertLedger
from prompt_processing.settings import ApdbSettings


class ApdbMissing(RuntimeError):
    """The APDB's tables are not there: `pp apdb init` was not run against this database."""


def init_apdb(settings: ApdbSettings, *, drop: bool = False) -> str:
    """Create the APDB's tables where they are missing (``drop``: all anew, losing what was there);
    a SQLite file's directory is made. Returns the schema version the database holds."""
    url = engine_url(settings)
    if url.startswith("sqlite"):
        Path(urlsplit(url).path).parent.mkdir(parents=True, exist_ok=True)
    ApdbSql.init_database(db_url=url, namespace=settings.namespace, connection_timeout=settings.connection_timeout_s,
                          read_sources_months=settings.prior_sources_months, drop=drop)  # fmt: skip
    open_ledger(settings, drop=drop).close()
    return schema_version(open_apdb(settings))


def open_apdb(settings: ApdbSettings) -> Apdb:
    """A client of the APDB (connections are made on use); ApdbMissing if it was never initialised."""
    config = ApdbSqlConfig(db_url=engine_url(settings), namespace=settings.namespace,
                           read_sources_months=settings.prior_sources_months)  # fmt: skip
    config.connection_config.connection_timeout = settings.connection_timeout_s
    try:
        return Apdb.from_config(config)
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError, LookupError) as exc:
        raise ApdbMissing(f"no APDB at {safe_url(settings)} (run `pp apdb init`): {exc}") from exc


@cache
def cached_apdb(db_url: str, namespace: str | None) -> Apdb:
    """``open_apdb`` once per process for each database (the client keeps its connection pool)."""
    return open_apdb(ApdbSettings(db_url=db_url, namespace=namespace))


def open_ledger(settings: ApdbSettings, *, drop: bool = False) -> AlertLedger:
    """The alerts ledger in the APDB's database (``apdb.ledger``), its tables made if missing."""
    return AlertLedger(engine_url(settings), settings.namespace, drop=drop)


def schema_version(apdb: Apdb) -> str:
    """The schema version recorded in the database's metadata table."""
    return str(dict(apdb.metadata.items()).get("version:schema", "unknown"))


def engine_url(settings: ApdbSettings) -> str:
    """The database URL, PostgreSQL ones through psycopg2: lsst-dax-apdb writes columns that are all null
    (``validityEndMjdTai`` of new DiaObjects), which psycopg 3's server-side binding sends as text and
    PostgreSQL refuses for a float column; psycopg2 binds on the client, as Rubin runs it."""
    if settings.db_url is None:
        raise ValueError("apdb.db_url is not set (Settings gives it a default under the stack's state directory)")
    url = sqlalchemy.engine.make_url(settings.db_url)
    if url.get_backend_name() == "postgresql" and url.get_driver_name() != "psycopg2":
        url = url.set(drivername="postgresql+psycopg2")
    return url.render_as_string(hide_password=False)


def safe_url(settings: ApdbSettings) -> str:
    """The database URL without its password, for messages."""
    return sqlalchemy.engine.make_url(engine_url(settings)).render_as_string(hide_password=True)
