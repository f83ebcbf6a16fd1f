"""Cloud SQL through the connector, with the connector's `connect` standing in: it records what it was asked
and opens a real connection to the local MariaDB / PostgreSQL, so every statement runs for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pg8000.dbapi
import pymysql
import pytest
import sqlalchemy as sa

from modelrun.db import cloudsql, create_schema, make_engine
from modelrun.db.cloudsql import CloudSql
from modelrun.db.predictions import count_predictions, read_predictions
from modelrun.errors import InvalidInput
from modelrun.settings import Settings
from tests.conftest import fresh_database_url

REPO = Path(__file__).resolve().parents[2]
INSTANCE = "my-project:europe-west1:modelrun"
SERVERS = ["mariadb", "postgresql"]
DRIVER = {"mariadb": "pymysql", "postgresql": "pg8000"}
SCHEME = {"mariadb": "mysql+pymysql", "postgresql": "postgresql+pg8000"}


class Server:
    """A fresh database on a local server, and a stand-in for `Connector.connect` that reaches it."""

    def __init__(self, backend: str, tmp_path):
        self.backend = backend
        url, self.drop = fresh_database_url(backend, tmp_path)
        self.real = sa.make_url(url)
        self.calls: list[tuple[str, str, dict]] = []

    def cloud_url(self, user: str | None = None, password: str | None = None) -> str:
        """The URL a Cloud SQL user writes: driver, user, password, database; no host."""
        url = sa.URL.create(SCHEME[self.backend], username=user or self.real.username, password=password,
                            database=self.real.database)
        return url.render_as_string(hide_password=False)

    def connect(self, instance: str, driver: str, **kwargs):
        self.calls.append((instance, driver, dict(kwargs)))
        assert driver == DRIVER[self.backend], f"asked for driver {driver!r} on {self.backend}"
        # An IAM user signs in with a token the connector fetches; locally the server's own user stands in.
        user = self.real.username if kwargs["enable_iam_auth"] else kwargs["user"]
        if driver == "pymysql":
            return pymysql.connect(host=self.real.host, port=self.real.port, user=user, database=kwargs["db"],
                                   connect_timeout=kwargs["timeout"], read_timeout=kwargs["read_timeout"],
                                   write_timeout=kwargs["write_timeout"])
        return pg8000.dbapi.connect(user, host=self.real.host, port=self.real.port, database=kwargs["db"],
                                    timeout=kwargs["timeout"])


@pytest.fixture(params=SERVERS)
def server(request, tmp_path):
    srv = Server(request.param, tmp_path)
    yield srv
    srv.drop()


@pytest.fixture
def fake_connector_module(monkeypatch):
    """`google.cloud.sql.connector` replaced by a module whose Connector counts instances and connects
    through a Server; the process's shared Connector is reset before and after."""
    module = types.ModuleType("google.cloud.sql.connector")
    module.made, module.closed, module.server = [], [], None

    class Connector:
        def __init__(self, **options):
            module.made.append(options)

        def connect(self, instance, driver, **kwargs):
            return module.server.connect(instance, driver, **kwargs)

        def close(self):
            module.closed.append(self)

    module.Connector = Connector
    cloudsql.close_connector()
    monkeypatch.setitem(sys.modules, "google.cloud.sql.connector", module)
    yield module
    cloudsql.close_connector()


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("MODELRUN_") or name == "PORT":
            monkeypatch.delenv(name)
    return monkeypatch


def prediction(i: int, deployment: str = "churn"):
    from serving.prediction_log import PredictionRecord

    return PredictionRecord(deployment=deployment, revision=1, request_id=uuid.uuid4().hex, client_request_id=str(i),
                            ts=datetime(2026, 1, 1, tzinfo=UTC), features={"age": np.array([30 + i], np.int64)},
                            outputs={"churn": np.array([[0.5]], np.float32)}, latency_ms=1.0)


# ---- the engine: what the connector is asked, and SQL that runs through it ------------------------------


def test_deployments_and_predictions_go_through_the_connector(server, tmp_path):
    from modelrun.control.repository import Repository
    from serving.prediction_log import PredictionLogger

    option = CloudSql(INSTANCE, ip_type="private", connect=server.connect)
    url = server.cloud_url(password="s3cret")
    engine = make_engine(url, cloudsql=option)
    try:
        create_schema(engine)
        repo = Repository(engine)
        repo.create("iris", "/m/1.keras", "/d/train.csv", {"label": "species"})
        assert (repo.get("iris").status, repo.get("iris").config) == ("PENDING", {"label": "species"})

        logger = PredictionLogger(url, "churn", journal_dir=tmp_path / "journal", cloudsql=option,
                                  flush_interval=0.02)
        logger.start()
        for i in range(5):
            logger.log(prediction(i))
        logger.close()
        assert logger.counts["written"] == 5 and logger.counts["journaled"] == 0
        assert count_predictions(engine, "churn") == 5
        assert sorted(row["features"]["age"] for row in read_predictions(engine, "churn")) == [[30], [31], [32], [33], [34]]
    finally:
        engine.dispose()

    assert server.calls, "nothing connected through the connector"
    for instance, driver, kwargs in server.calls:
        assert (instance, driver) == (INSTANCE, DRIVER[server.backend])
        assert kwargs["user"] == server.real.username and kwargs["db"] == server.real.database
        assert kwargs["password"] == "s3cret"
        assert (kwargs["enable_iam_auth"], kwargs["ip_type"]) == (False, "private")
        assert "host" not in kwargs and "port" not in kwargs


def test_iam_authentication_sends_no_password(server):
    iam_user = "modelrun-sa@my-project.iam" if server.backend == "postgresql" else "modelrun-sa"
    url = server.cloud_url(user=iam_user)  # the "@" of a PostgreSQL IAM user is percent-encoded in the URL
    assert "%40" in url or server.backend == "mariadb"
    engine = make_engine(url, cloudsql=CloudSql(INSTANCE, iam_auth=True, ip_type="psc", connect=server.connect))
    try:
        create_schema(engine)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
    instance, driver, kwargs = server.calls[0]
    assert (instance, driver, kwargs["user"], kwargs["db"]) == (INSTANCE, DRIVER[server.backend], iam_user,
                                                                 server.real.database)
    assert kwargs["enable_iam_auth"] is True and kwargs["ip_type"] == "psc"
    assert "password" not in kwargs


def test_a_small_pool_for_serverless_with_the_statement_timeout_kept(server):
    engine = make_engine(server.cloud_url(), connect_timeout=4.0, io_timeout=7.0,
                         cloudsql=CloudSql(INSTANCE, connect=server.connect))
    try:
        pool = engine.pool
        assert (pool.size(), pool._max_overflow, pool._timeout, pool._recycle, pool._pre_ping) == (2, 3, 10, 1800, True)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            raw = conn.connection.dbapi_connection
            if server.backend == "postgresql":
                assert raw._usock.gettimeout() == 7.0  # statements get io_timeout, not the connect timeout
            else:
                assert (raw._read_timeout, raw._write_timeout) == (7, 7)
    finally:
        engine.dispose()
    assert server.calls[0][2]["timeout"] == 4


# ---- one Connector per process, created on first use --------------------------------------------------


def test_control_plane_and_model_server_share_one_connector(server, fake_connector_module, clean_env, tmp_path):
    from modelrun.control.plane import ControlPlane
    from serving.server import _make_logger
    from serving.settings import ServingSettings

    fake_connector_module.server = server
    clean_env.setenv("MODELRUN_HOME", str(tmp_path / "home"))
    clean_env.setenv("MODELRUN_DATABASE_URL", server.cloud_url())
    clean_env.setenv("MODELRUN_CLOUDSQL_INSTANCE", INSTANCE)
    clean_env.setenv("MODELRUN_CLOUDSQL_IP_TYPE", "private")

    plane = ControlPlane(Settings())
    assert fake_connector_module.made == []  # nothing connects until the first statement
    try:
        create_schema(plane.engine)
        plane.repo.create("iris", "/m/1.keras", "/d/train.csv", {})
        assert [d.name for d in plane.repo.list()] == ["iris"]
        logger = _make_logger(ServingSettings(model_uri="m.keras", model_name="churn"))
        logger.start()
        logger.log(prediction(1))
        logger.close()
        assert count_predictions(plane.engine, "churn") == 1
    finally:
        plane.engine.dispose()
    assert len(fake_connector_module.made) == 1  # one Connector for both engines and all their connections
    assert fake_connector_module.made[0] == {"refresh_strategy": "lazy"}
    assert len(server.calls) >= 2 and {call[2]["ip_type"] for call in server.calls} == {"private"}
    cloudsql.close_connector()
    assert len(fake_connector_module.closed) == 1


def test_the_connector_is_imported_only_when_a_connection_is_made(tmp_path):
    """In a fresh process, with the real Connector class (its network call replaced): importing modelrun.db and
    building an engine load nothing of the connector; the first connection makes one Connector; exit closes it."""
    url, drop = fresh_database_url("mariadb", tmp_path)
    real = sa.make_url(url)
    script = f"""
import json, sys
import modelrun.db, modelrun.settings, modelrun.cli
from modelrun.db import make_engine
from modelrun.db.cloudsql import CloudSql
seen = {{"after_import": "google.cloud.sql.connector" in sys.modules}}
engine = make_engine("mysql://root@/{real.database}", cloudsql=CloudSql("{INSTANCE}"))
seen["after_engine"] = "google.cloud.sql.connector" in sys.modules

import google.auth, google.auth.credentials, pymysql
from google.cloud.sql.connector import Connector
# no Application Default Credentials here; on Google Cloud the service account's are found
google.auth.default = lambda **kwargs: (google.auth.credentials.AnonymousCredentials(), "my-project")
made, asked = [], []
original_init = Connector.__init__
def counting_init(self, *args, **kwargs):
    made.append(kwargs)
    original_init(self, *args, **kwargs)
def local_connect(self, instance, driver, **kwargs):
    asked.append([instance, driver, kwargs["user"], kwargs["db"]])
    return pymysql.connect(host="{real.host}", port={real.port}, user=kwargs["user"], database=kwargs["db"])
Connector.__init__, Connector.connect = counting_init, local_connect
for _ in range(2):
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
engine.dispose()
with make_engine("mysql://root@/{real.database}", cloudsql=CloudSql("{INSTANCE}")).connect() as conn:
    conn.exec_driver_sql("SELECT 1")
seen.update(made=made, asked=asked)
print(json.dumps(seen))
"""
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        drop()
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Exception" not in done.stderr, done.stderr  # closing at exit is clean
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert (seen["after_import"], seen["after_engine"]) == (False, False)
    assert seen["made"] == [{"refresh_strategy": "lazy"}]  # one, for two engines
    assert seen["asked"] == [[INSTANCE, "pymysql", "root", real.database]] * 2


# ---- clear errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["modelrun", "my-project/europe-west1/modelrun", "my-project:modelrun",
                                  "my-project:europe-west1:", "a:b:c:d:e", " my-project:europe-west1:modelrun"])
def test_a_bad_instance_name_is_refused(name):
    with pytest.raises(InvalidInput, match=r"not an instance connection name: expected project:region:instance"):
        CloudSql(name)


def test_good_instance_names_including_domain_scoped_projects():
    for name in (INSTANCE, "example.com:my-project:us-central1:db-1"):
        assert CloudSql(name).instance == name


@pytest.mark.parametrize(("url", "iam", "message"), [
    ("postgresql+psycopg2://modelrun@/modelrun", False, "needs a mysql\\+pymysql:// or postgresql\\+pg8000://"),
    ("mysql+mysqldb://modelrun@/modelrun", False, "not mysql\\+mysqldb://"),
    ("sqlite:///modelrun.db", False, "needs a mysql\\+pymysql://"),
    ("postgresql+pg8000://modelrun@10.0.0.5/modelrun", False, "names no host or port"),
    ("mysql+pymysql://modelrun@:3306/modelrun", False, "names no host or port"),
    ("postgresql+pg8000://modelrun@/", False, "needs a user and a database"),
    ("postgresql+pg8000://sa%40p.iam:pw@/modelrun", True, "IAM authentication the database URL has no password"),
])
def test_a_url_the_connector_cannot_use_is_refused(url, iam, message):
    with pytest.raises(InvalidInput, match=message) as caught:
        make_engine(url, cloudsql=CloudSql(INSTANCE, iam_auth=iam, connect=lambda *a, **k: pytest.fail("connected")))
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(("url", "driver"), [("postgresql://modelrun@/modelrun", "pg8000"),
                                             ("mysql://modelrun@/modelrun", "pymysql")])
def test_a_connector_failure_is_database_unavailable(url, driver):
    """A bare scheme gets our driver; what the connector raises (no credentials, Admin API down) reaches the
    control plane as an unavailable database (503), as a local database that is down does."""
    from modelrun.control.repository import Repository
    from modelrun.errors import Unavailable

    asked = []

    def unreachable(instance, driver, **kwargs):
        asked.append((instance, driver))
        raise TimeoutError("no answer from the Cloud SQL Admin API")

    engine = make_engine(url, cloudsql=CloudSql(INSTANCE, connect=unreachable))
    with pytest.raises(Unavailable, match="the database is unavailable: .*no answer from the Cloud SQL Admin API"):
        Repository(engine).create("iris", "/m/1.keras", "/d/train.csv", {})
    assert asked and set(asked) == {(INSTANCE, driver)}


# ---- settings -------------------------------------------------------------------------------------------


def test_both_settings_read_cloudsql_from_the_environment(clean_env):
    from serving.settings import ServingSettings

    assert Settings().cloudsql is None and ServingSettings(model_uri="m", model_name="m").cloudsql is None
    clean_env.setenv("MODELRUN_DATABASE_URL", "postgresql+pg8000://modelrun-sa%40my-project.iam@/modelrun")
    clean_env.setenv("MODELRUN_CLOUDSQL_INSTANCE", INSTANCE)
    clean_env.setenv("MODELRUN_CLOUDSQL_IAM_AUTH", "true")
    clean_env.setenv("MODELRUN_CLOUDSQL_IP_TYPE", "private")
    expected = CloudSql(INSTANCE, iam_auth=True, ip_type="private")
    assert Settings().cloudsql == expected
    assert ServingSettings(model_uri="m", model_name="m").cloudsql == expected
    clean_env.setenv("MODELRUN_CLOUDSQL_INSTANCE", "")  # set but blank: unset, as the local runner clears it
    assert Settings().cloudsql is None


def test_bad_cloudsql_settings_stop_the_cli_and_the_model_server_with_one_line(clean_env, capsys):
    from modelrun.cli import _settings
    from serving.__main__ import main

    clean_env.setenv("MODELRUN_CLOUDSQL_INSTANCE", "modelrun")
    with pytest.raises(InvalidInput, match="MODELRUN_CLOUDSQL_INSTANCE: .*expected project:region:instance"):
        _settings()
    assert main(["--model", "m.keras", "--name", "m"]) == 2
    assert "MODELRUN_CLOUDSQL_INSTANCE='modelrun'" in capsys.readouterr().err

    clean_env.setenv("MODELRUN_CLOUDSQL_INSTANCE", INSTANCE)  # but no database URL: the SQLite default is no use
    with pytest.raises(InvalidInput, match="Cloud SQL needs MODELRUN_DATABASE_URL"):
        _settings()
    clean_env.setenv("MODELRUN_DATABASE_URL", "postgresql://modelrun@db.internal/modelrun")
    assert main(["--model", "m.keras", "--name", "m"]) == 2
    err = capsys.readouterr().err
    assert "names no host or port" in err and len(err.strip().splitlines()) == 1
    clean_env.setenv("MODELRUN_DATABASE_URL", "postgresql://modelrun@/modelrun")
    clean_env.setenv("MODELRUN_CLOUDSQL_IP_TYPE", "internal")
    with pytest.raises(InvalidInput, match="MODELRUN_CLOUDSQL_IP_TYPE"):
        _settings()


def test_the_local_runner_hands_the_cloudsql_settings_to_its_model_servers(clean_env, tmp_path):
    from modelrun.control.backends import local_runner
    from modelrun.control.backends.local_builder import MANIFEST
    from modelrun.control.models import Revision
    from serving.settings import ServingSettings

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / MANIFEST).write_text(json.dumps({"model": "model.keras", "training_data": "train.csv"}))
    clean_env.setenv("MODELRUN_CLOUDSQL_INSTANCE", "stale-project:us-east1:old")  # the settings below win
    settings = Settings(home=tmp_path / "home", database_url="mysql://modelrun:pw@/modelrun",
                        cloudsql_instance=INSTANCE, cloudsql_ip_type="psc")
    started = {}

    class Child:
        pid = os.getpid()

    def popen(command, **kwargs):
        started["env"] = kwargs["env"]
        return Child()

    clean_env.setattr(local_runner.subprocess, "Popen", popen)
    runner = local_runner.LocalRunner(settings)
    runner.start(Revision(1, "iris", 1, "DEPLOYING", "", "", {}, artifact=str(bundle)), ["a", "b"])
    runner._children.clear()

    for name, value in started["env"].items():
        if name.startswith("MODELRUN_"):
            clean_env.setenv(name, value)
    served = ServingSettings(model_uri="m.keras", model_name="iris")
    assert served.cloudsql == CloudSql(INSTANCE, ip_type="psc")
    assert served.resolved_database_url == "mysql://modelrun:pw@/modelrun"

    # settings without Cloud SQL clear a MODELRUN_CLOUDSQL_INSTANCE the control plane's environment still has
    plain = Settings(home=tmp_path / "home", cloudsql_instance=None)
    local_runner.LocalRunner(plain).start(Revision(1, "iris", 2, "DEPLOYING", "", "", {}, artifact=str(bundle)), [])
    assert started["env"]["MODELRUN_CLOUDSQL_INSTANCE"] == ""
    clean_env.setenv("MODELRUN_CLOUDSQL_INSTANCE", started["env"]["MODELRUN_CLOUDSQL_INSTANCE"])
    clean_env.setenv("MODELRUN_DATABASE_URL", started["env"]["MODELRUN_DATABASE_URL"])
    assert ServingSettings(model_uri="m.keras", model_name="iris").cloudsql is None
