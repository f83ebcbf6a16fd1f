"""Fixtures every test package may use: a fresh database on SQLite, MariaDB or PostgreSQL.

MariaDB and PostgreSQL are expected on 127.0.0.1 (`.ci/run` starts them). A test that needs one fails
when it is down, rather than skipping: CI must prove all three. Override the server URLs with
MODELRUN_TEST_MARIADB / MODELRUN_TEST_POSTGRES.
"""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa

from tests.gcs_emulator import bucket, emulator  # noqa: F401 (fixtures for every package, one emulator)

SERVER_URLS = {
    "mariadb": os.environ.get("MODELRUN_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"),
    "postgresql": os.environ.get("MODELRUN_TEST_POSTGRES", "postgresql+pg8000://postgres@127.0.0.1:5432/postgres"),
}
BACKENDS = ["sqlite", "mariadb", "postgresql"]


def fresh_database_url(backend: str, tmp_path) -> tuple[str, callable]:
    """Create an empty database and return (url, drop)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'modelrun.db'}", lambda: None
    server = sa.make_url(SERVER_URLS[backend])
    name = f"mr_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")

    def drop() -> None:
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()

    return server.set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    """A fresh, empty database on each of SQLite, MariaDB and PostgreSQL in turn."""
    url, drop = fresh_database_url(request.param, tmp_path)
    yield url
    drop()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'modelrun.db'}"
