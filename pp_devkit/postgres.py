"""A throwaway PostgreSQL database on the machine's server, for tests and benchmarks of a PostgreSQL registry."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
"""The machine's server (trust authentication), as CI and this project's machines have it."""


@contextmanager
def fresh_database(prefix: str = "pp_test", admin_url: str = ADMIN_URL) -> Iterator[str]:
    """A new database, as a SQLAlchemy URL (psycopg 3); dropped afterwards, open connections and all."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{admin_url.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
