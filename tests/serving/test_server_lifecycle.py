"""The server process: listen first and report NOT_SERVING while loading, then SERVING; refuse what it
cannot load with one clear line and a non-zero exit; stop cleanly on SIGTERM; reflection; logging hook."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import threading

import grpc
import numpy as np
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from modelrun.db.predictions import read_predictions
from modelrun.proto import inference_pb2 as pb
from modelrun.proto import inference_pb2_grpc as pb_grpc
from tests.serving import models
from tests.serving.conftest import NO_LOG, SERVING, ServerProcess, launch, start_server
from tests.util import free_port, wait_until

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "inference.GRPCInferenceService"


def infer_request(x: np.ndarray, request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="dense8", id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.astype(np.float32).tobytes())
    return request


def test_not_serving_while_loading_then_serving(model_files):
    server = launch(model_files["dense8"], "dense8", env=NO_LOG)
    try:
        # The port opens before TensorFlow is even imported: the first answer comes while loading.
        first = wait_until(lambda: server.proc.poll() is not None or server.health() is not None,
                           timeout=60, interval=0.02, what="the port to answer")
        assert first is True and server.proc.poll() is None
        seen = {"": server.health(""), SERVICE: server.health(SERVICE)}
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            live = stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
            ready = stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
            model_ready = stub.ModelReady(pb.ModelReadyRequest(name="dense8"), timeout=5).ready
            with pytest.raises(grpc.RpcError) as early:
                stub.ModelInfer(infer_request(np.zeros((1, 8))), timeout=5)
        assert seen == {"": NOT_SERVING, SERVICE: NOT_SERVING}
        assert (live, ready, model_ready) == (True, False, False)
        assert early.value.code() == grpc.StatusCode.UNAVAILABLE and "still loading" in early.value.details()

        server.wait_serving()
        assert server.health(SERVICE) == SERVING
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
            assert stub.ModelReady(pb.ModelReadyRequest(name="dense8"), timeout=5).ready
            reply = stub.ModelInfer(infer_request(np.ones((1, 8))), timeout=10)
        assert len(reply.raw_output_contents[0]) == 4
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.keras", "no such file or folder"),
    (lambda d: _write(d / "model.txt", b"not a model"), "is not a model I can serve: expected a Keras .keras file "
                                                         "or a TensorFlow SavedModel folder"),
    (lambda d: (d / "empty_dir").mkdir() or d / "empty_dir", "a folder without saved_model.pb"),
    (lambda d: _write(d / "broken.keras", b"PK not really a zip"), "could not load"),
])
def test_a_model_that_cannot_load_ends_the_process(tmp_path, make, message):
    server = launch(make(tmp_path), "broken", env=NO_LOG, home=tmp_path / "home")
    try:
        code = server.proc.wait(timeout=120)
    finally:
        server.stop()
    assert code == 1
    errors = [line for line in server.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and message in errors[0], server.log()


def test_feature_names_that_do_not_fit_the_model_end_the_process(model_files, tmp_path):
    server = launch(model_files["dense8"], "dense8", env={**NO_LOG, "MODELRUN_FEATURE_NAMES": "a,b"}, home=tmp_path)
    assert server.proc.wait(timeout=120) == 1
    assert "MODELRUN_FEATURE_NAMES has 2 names but input 'x' has 8 columns" in server.log()


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_port_in_use_ends_the_process(model_files, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = launch(model_files["dense8"], "dense8", env={**NO_LOG, "PORT": "1"}, home=tmp_path,
                        extra_args=["--port", str(port)])
        code = server.proc.wait(timeout=60)
    assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in server.log()


def test_sigterm_while_loading_exits_cleanly(model_files, tmp_path):
    server = launch(model_files["dense8"], "dense8", env=NO_LOG, home=tmp_path)
    wait_until(lambda: server.health() == NOT_SERVING, timeout=60, interval=0.02, what="the port to answer")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0


def test_reflection_lists_every_service(dense8_server):
    with grpc.insecure_channel(dense8_server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {SERVICE, "grpc.health.v1.Health"} <= services
        described = database.FindFileContainingSymbol("inference.ModelInferRequest")
        assert any(message.name == "ModelInferRequest" for message in described.message_type)


def test_sixty_four_concurrent_callers_each_get_their_own_rows(dense8_server, model_files):
    keras_model = models.load_keras(model_files["dense8"])
    inputs = [np.random.default_rng(i).normal(size=(1 + i % 4, 8)).astype(np.float32) for i in range(64)]

    async def call_all():
        async with grpc.aio.insecure_channel(dense8_server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            return await asyncio.gather(*(stub.ModelInfer(infer_request(x, f"c{i}"), timeout=60)
                                          for i, x in enumerate(inputs)))

    replies = asyncio.run(call_all())
    for i, (x, reply) in enumerate(zip(inputs, replies)):
        assert reply.id == f"c{i}"
        got = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(len(x), 1)
        np.testing.assert_allclose(got, np.asarray(keras_model(x)), rtol=1e-5, atol=1e-6)


def test_sigterm_under_load_finishes_answered_requests_and_exits_0(model_files, tmp_path):
    keras_model = models.load_keras(model_files["dense8"])
    x = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    want = np.asarray(keras_model(x))
    outcomes: list = []
    stop = threading.Event()

    def client(server):
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set() and len(outcomes) < 100000:
                try:
                    reply = stub.ModelInfer(infer_request(x), timeout=10)
                    outcomes.append(np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(2, 1))
                except grpc.RpcError as error:
                    outcomes.append(error.code())
                    return

    with start_server(model_files["dense8"], "dense8", env=NO_LOG, home=tmp_path) as server:
        threads = [threading.Thread(target=client, args=(server,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(outcomes) >= 200, timeout=60, what="requests to flow")
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=30)
        stop.set()
        for thread in threads:
            thread.join(30)
    assert code == 0
    answered = [o for o in outcomes if isinstance(o, np.ndarray)]
    refused = [o for o in outcomes if not isinstance(o, np.ndarray)]
    assert len(answered) >= 200
    assert all(np.allclose(o, want, rtol=1e-5, atol=1e-6) for o in answered)
    # Calls that race the shutdown are refused by gRPC itself (CANCELLED before any handler ran, or
    # UNAVAILABLE once the port is closed): never INTERNAL, never a wrong answer.
    assert set(refused) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert "stopped" in server.log()


def test_every_answered_request_is_logged_under_the_feature_names(model_files, tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    names = ["f_" + c for c in "abcdefgh"]
    env = {"MODELRUN_DATABASE_URL": url, "MODELRUN_FEATURE_NAMES": ",".join(names), "MODELRUN_REVISION": "3"}
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    with start_server(model_files["dense8"], "dense8", env=env, home=tmp_path) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            replies = [stub.ModelInfer(infer_request(x, f"client-{i}"), timeout=10) for i in range(5)]
        assert server.stop() == 0  # SIGTERM flushes the log
    engine = sa.create_engine(url)
    rows = read_predictions(engine, "dense8")
    engine.dispose()
    assert sorted(row["client_request_id"] for row in rows) == [f"client-{i}" for i in range(5)]
    assert len({row["request_id"] for row in rows}) == 5
    row = rows[0]
    assert row["revision"] == 3
    assert row["features"] == {name: [float(i), float(8 + i)] for i, name in enumerate(names)}
    y = np.frombuffer(replies[0].raw_output_contents[0], np.float32)
    assert np.allclose(row["outputs"]["y"], y)


def test_a_new_server_on_a_shared_port_takes_over_the_old_ones_clients_before_it_stops(model_files, tmp_path):
    # The local runner's update: revision 2 starts on revision 1's port (each answers health on an admin port
    # of its own), then revision 1 is stopped while a client holds one channel to the port.
    port = free_port()

    def start(revision: int) -> tuple[ServerProcess, ServerProcess]:
        admin = free_port()
        server = launch(model_files["dense8"], "dense8", home=tmp_path,
                        env={**NO_LOG, "MODELRUN_SHARE_PORT": "true", "MODELRUN_REVISION": str(revision)},
                        extra_args=["--port", str(port), "--admin-port", str(admin)])
        return server, dataclasses.replace(server, address=f"127.0.0.1:{admin}", port=admin)

    def version_on_a_new_connection() -> str:
        # A local subchannel pool: a new channel of the process would otherwise reuse the held connection.
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(x), timeout=30).model_version

    x = np.ones((2, 8), dtype=np.float32)
    old, old_admin = start(1)
    new = None
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    versions, failures, stop = [], [], threading.Event()

    def traffic():
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            try:
                versions.append(stub.ModelInfer(infer_request(x), timeout=30).model_version)
            except grpc.RpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")

    thread = threading.Thread(target=traffic, daemon=True)
    try:
        old_admin.wait_serving()
        thread.start()
        new, new_admin = start(2)
        wait_until(lambda: new_admin.health() == NOT_SERVING, timeout=60, interval=0.02, what="the admin port")
        # While revision 2 loads, new connections to the port all reach revision 1.
        assert [version_on_a_new_connection() for _ in range(8)] == ["1"] * 8 or new_admin.health() == SERVING
        new_admin.wait_serving()
        # Once revision 2 serves, it takes every new connection, and the held channel moves over to it as its
        # connection ages: revision 1 has no client left when it is stopped.
        assert [version_on_a_new_connection() for _ in range(8)] == ["2"] * 8
        wait_until(lambda: versions[-1] == "2", timeout=30, what="the held channel to move to revision 2")
        assert old.stop() == 0
        seen = len(versions)
        wait_until(lambda: len(versions) > seen + 20, timeout=60, what="calls after revision 1 stopped")
    finally:
        stop.set()
        thread.join(60)
        channel.close()
        old.stop()
        if new is not None:
            new.stop()
    assert failures == []
    assert versions[0] == "1" and set(versions[-10:]) == {"2"}
