"""Cloud SQL (MySQL or PostgreSQL) through the Cloud SQL Python Connector.

The connector finds the instance by its connection name (`project:region:instance`), fetches a short-lived
client certificate and opens a TLS connection for our driver, so the database URL names only driver, user,
password and database: `postgresql+pg8000://modelrun@/modelrun`, `mysql+pymysql://modelrun:secret@/modelrun`.
Every engine of a process shares one Connector (it caches certificates and runs a background event loop),
created on first connect and closed at exit. `google.cloud.sql.connector` is imported only then, so programs
that never use Cloud SQL never load it.
"""

from __future__ import annotations

import atexit
import importlib
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from modelrun.errors import InvalidInput

IpType = Literal["public", "private", "psc"]
IP_TYPES = ("public", "private", "psc")

# SQLAlchemy driver -> the connector's name for it.
DRIVERS = {"pymysql": "pymysql", "pg8000": "pg8000"}
_DBAPI = {"pymysql": "pymysql", "pg8000": "pg8000.dbapi"}  # where each driver's DB-API errors live

# Serverless instances (Cloud Run, Cloud Functions) have few concurrent users each and Cloud SQL has a
# connection limit shared by all of them: keep few connections, recycle them before the server's idle cut-off.
POOL = {"pool_size": 2, "max_overflow": 3, "pool_timeout": 10, "pool_recycle": 1800, "pool_pre_ping": True}

# project (optionally domain-scoped, `example.com:project`) : region : instance
_INSTANCE_NAME = re.compile(r"(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]*:[a-z0-9-]+:[a-z0-9][a-z0-9-]*")


def instance_problem(name: str) -> str | None:
    """Why `name` is not an instance connection name, or None when it is one."""
    if _INSTANCE_NAME.fullmatch(name):
        return None
    return (f"Cloud SQL instance {name!r} is not an instance connection name: expected project:region:instance, "
            "e.g. my-project:europe-west1:modelrun")


def url_problem(url: sa.URL, iam_auth: bool) -> str | None:
    """Why `url` (driver already normalized) cannot be used with the connector, or None when it can."""
    example = "e.g. postgresql+pg8000://modelrun@/modelrun or mysql+pymysql://modelrun:secret@/modelrun"
    if url.get_driver_name() not in DRIVERS or url.get_backend_name() not in ("mysql", "postgresql"):
        return (f"Cloud SQL needs a mysql+pymysql:// or postgresql+pg8000:// database URL, not "
                f"{url.drivername}:// ({example})")
    if url.host or url.port:
        return f"with Cloud SQL the database URL names no host or port (the connector finds the instance): {example}"
    if not url.username or not url.database:
        return f"with Cloud SQL the database URL needs a user and a database: {example}"
    if iam_auth and url.password:
        return ("with Cloud SQL IAM authentication the database URL has no password "
                "(the connector signs in as the URL's user)")
    return None


@dataclass(frozen=True)
class CloudSql:
    """Which Cloud SQL instance to reach and how; the database URL says driver, user, password and database."""

    instance: str
    """Instance connection name, `project:region:instance`."""

    iam_auth: bool = False
    """IAM database authentication: no password, the URL's user is the service account's IAM database user."""

    ip_type: IpType = "public"
    """Which of the instance's addresses to use."""

    connect: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    """Stands in for `Connector.connect(instance, driver, **kwargs)` (tests). None: the process's Connector."""

    def __post_init__(self) -> None:
        problem = instance_problem(self.instance)
        if problem:
            raise InvalidInput(problem)
        if self.ip_type not in IP_TYPES:
            raise InvalidInput(f"Cloud SQL ip type {self.ip_type!r} is not one of {', '.join(IP_TYPES)}")

    def engine_options(self, url: sa.URL, *, connect_timeout: float, io_timeout: float) -> dict:
        """`create_engine` keyword arguments: a pool for serverless and a `creator` that connects through the
        connector. Raises InvalidInput for a URL the connector cannot use."""
        problem = url_problem(url, self.iam_auth)
        if problem:
            raise InvalidInput(problem)
        driver = DRIVERS[url.get_driver_name()]
        kwargs: dict[str, Any] = {"user": url.username, "db": url.database, "enable_iam_auth": self.iam_auth,
                                  "ip_type": self.ip_type, "timeout": max(1, int(connect_timeout))}
        if url.password and not self.iam_auth:
            kwargs["password"] = url.password
        if driver == "pymysql":  # pg8000 gets its io timeout from make_engine's connect listener
            io_seconds = max(1, math.ceil(io_timeout))
            kwargs.update(read_timeout=io_seconds, write_timeout=io_seconds)
        connect, instance = self.connect or _shared_connect, self.instance
        dbapi = importlib.import_module(_DBAPI[driver])

        def creator():
            try:
                return connect(instance, driver, **kwargs)
            except dbapi.Error:
                raise
            except Exception as exc:  # the connector's own failures (credentials, Admin API, timeouts): as the
                # driver's OperationalError, so callers see "database unavailable" as for any database that is down
                raise dbapi.OperationalError(f"Cloud SQL connector, instance {instance}: "
                                             f"{type(exc).__name__}: {exc}") from exc

        return {**POOL, "creator": creator}


_lock = threading.Lock()
_connector = None
_close_registered = False


def _shared_connect(instance: str, driver: str, **kwargs):
    return shared_connector().connect(instance, driver, **kwargs)


def shared_connector():
    """This process's one Connector, created on first use (lazy refresh: serverless CPUs may sleep between
    requests, so certificates are refreshed when a connection needs them, not by a background task)."""
    global _connector, _close_registered
    with _lock:
        if _connector is None:
            from google.cloud.sql.connector import Connector

            _connector = Connector(refresh_strategy="lazy")
            if not _close_registered:
                atexit.register(close_connector)
                _close_registered = True
        return _connector


def close_connector() -> None:
    """Close the shared Connector (at exit; a later connect makes a new one)."""
    global _connector
    with _lock:
        connector, _connector = _connector, None
    if connector is not None:
        connector.close()


def settings_problem(instance: str, database_url: str | None, iam_auth: bool) -> str | None:
    """Why these settings cannot reach Cloud SQL (instance name, database URL), or None: for the settings
    classes, so a wrong value is reported at start, by the variable that holds it."""
    from modelrun.db import normalize_url

    problem = instance_problem(instance)
    if problem:
        return problem
    if not database_url:
        return ("Cloud SQL needs MODELRUN_DATABASE_URL naming driver, user and database, "
                "e.g. postgresql+pg8000://modelrun@/modelrun")
    try:
        url = normalize_url(database_url)
    except sa.exc.ArgumentError:
        return f"MODELRUN_DATABASE_URL {database_url!r} is not a database URL"
    return url_problem(url, iam_auth)
