"""The server process: listen first, load the model in the background, serve, shut down cleanly.

Order of events: bind the port (health answers NOT_SERVING) → import TensorFlow and load the model on
the model thread, start the prediction logger → warm-up inference → freeze the heap → health SERVING. A model that
cannot be loaded ends the process with one clear log line and exit code 1, so a supervisor sees it.
With an admin port (the local runner's), that port is bound first and the serving port only once the model
is warm: the serving port may be shared (SO_REUSEPORT) with the previous revision's server, and must never
take a connection this server cannot answer yet. Once it listens there, it takes every new connection and the
old server's clients move over as their connections age (serving/handover.py). Probes use the admin port,
which reaches this server alone.
SIGTERM/SIGINT: health NOT_SERVING, then grpc's server.stop(grace): it closes the listening sockets first,
then sends every connection GOAWAY (clients reconnect, to whoever still listens on the port) and lets
in-flight RPCs finish (grace period); then flush the prediction log, exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import time
from pathlib import Path

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from modelrun.errors import ModelrunError, Unprocessable
from modelrun.proto import inference_pb2 as pb
from modelrun.proto import inference_pb2_grpc as pb_grpc
from modelrun.uris import resolve_local
from serving import handover
from serving.batching import Batcher
from serving.dataplane import DataPlane
from serving.grpc_service import InferenceServicer
from serving.settings import ServingSettings

log = logging.getLogger("serving")

INFERENCE_SERVICE = "inference.GRPCInferenceService"
GRACE_SECONDS = 5.0  # Cloud Run allows 10 s after SIGTERM; the rest is for flushing the log
LOG_CLOSE_SECONDS = 3.0


async def serve(settings: ServingSettings) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    try:
        logger = _make_logger(settings)
    except Exception as exc:
        log.error("cannot start the prediction log: %s", exc)
        return 1
    dataplane = DataPlane(settings.model_name, settings.revision, feature_names=settings.feature_names,
                          logger=logger)
    health_servicer = await _health_servicer()
    host = f"[{settings.host}]" if ":" in settings.host and not settings.host.startswith("[") else settings.host
    public = _build_server(settings, dataplane, health_servicer, shared=settings.share_port)
    admin = _build_server(settings, dataplane, health_servicer, shared=False) if settings.admin_port else None
    servers = [s for s in (admin, public) if s is not None]
    early = admin or public  # what listens while the model loads
    if (port := _listen(early, host, settings.admin_port or settings.port)) is None:
        return 1
    await early.start()
    log.info("listening on %s:%d (gRPC, cleartext HTTP/2%s); loading model %r from %s", host, port,
             ", admin port" if admin else "", settings.model_name, settings.model_uri)

    startup = asyncio.ensure_future(_start(settings, dataplane, logger))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({startup, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not startup.done():
        log.info("stop requested while loading; shutting down")
        await early.stop(0)
        return 0  # the loading thread is abandoned; __main__ exits without waiting for it
    stopped.cancel()
    if error := startup.exception():
        await early.stop(0)  # first: cancelling a call in flight may log, and the error must be the last line
        log.error("%s", error.message if isinstance(error, ModelrunError) else f"startup failed: {error!r}")
        return 1
    _freeze_heap()
    if admin is not None:
        if (port := _listen(public, host, settings.port)) is None:
            await admin.stop(0)
            return 1
        await public.start()
        if settings.share_port:
            handover.steer_new_connections_here(port)
    for service in ("", INFERENCE_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving model %r revision %d (%s) on %s:%d", settings.model_name, settings.revision,
             dataplane.model.platform, host, port)

    await stop.wait()
    await _shutdown(servers, health_servicer, dataplane, logger)
    return 0


def _listen(server, host: str, port: int) -> int | None:
    """Bind `port` (0: any free one); the port bound, or None after logging why it could not be."""
    address = f"{host}:{port}"
    try:
        return server.add_insecure_port(address)
    except RuntimeError as exc:
        log.error("cannot listen on %s: %s", address, exc)
        return None


def _freeze_heap() -> None:
    """Move everything alive after loading (TensorFlow and Keras: some 300k objects) out of the garbage
    collector's sight. They live as long as the process, yet every full collection would walk them all:
    200-500 ms with the GIL held, a latency spike for every request in flight. Collect first so that
    garbage from loading is freed, not frozen."""
    gc.collect()
    gc.freeze()


async def _shutdown(servers: list, health_servicer, dataplane: DataPlane, logger) -> None:
    log.info("stopping: finishing in-flight requests (up to %.0f s)", GRACE_SECONDS)
    await health_servicer.enter_graceful_shutdown()
    await asyncio.gather(*(server.stop(GRACE_SECONDS) for server in servers))
    await asyncio.to_thread(dataplane.batcher.close)
    stats = dataplane.batcher.stats
    log.info("served %d requests (%d rows) in %d model calls (%d waited the whole batching wait)", stats.requests,
             stats.rows, stats.calls, stats.waits_expired)
    if logger is not None:
        await asyncio.to_thread(logger.close, LOG_CLOSE_SECONDS)
    log.info("stopped")


async def _start(settings: ServingSettings, dataplane: DataPlane, logger) -> None:
    """Load and warm up the model on a thread while the prediction log starts; then go live."""
    began = time.monotonic()
    path, training_data = _model_and_data(resolve_local(settings.model_uri), settings.training_data)
    loading = asyncio.ensure_future(asyncio.to_thread(_load_and_warm_up, path, settings.intra_op_threads))
    if logger is not None:
        await asyncio.to_thread(logger.start)
    model = await loading
    try:
        dataplane.check(model)  # the feature names against the model's input, before running it on the data
    except ValueError as exc:
        raise ModelrunError(str(exc)) from None
    if logger is not None and training_data is not None:
        await asyncio.to_thread(_profile_outputs, model, settings, training_data)
    batcher = Batcher(model.predict, max_batch_size=settings.max_batch_size,
                      max_wait_ms=settings.batch_max_wait_ms, enabled=model.batchable,
                      observe=dataplane.log_batch if logger is not None else None)
    dataplane.set_model(model, batcher)
    log.info("model loaded and warmed up in %.1f s", time.monotonic() - began)


def _load_and_warm_up(path, intra_op_threads: int):
    from serving.model import load_model  # the module that imports TensorFlow, lazily

    model = load_model(path, intra_op_threads=intra_op_threads)
    try:
        model.warm_up()
    except Exception as exc:
        reason = exc.message if isinstance(exc, ModelrunError) else f"{type(exc).__name__}: {exc}"
        raise Unprocessable(f"{path}: the warm-up inference on one row of zeros failed: {reason}") from exc
    return model


def _model_and_data(path: Path, training_data: Path | None) -> tuple[Path, Path | None]:
    """A bundle folder (bundle.json: the model and training data a builder staged, as in a Cloud Run image's
    /srv/bundle) names both; anything else is the model itself."""
    manifest = path / "bundle.json"
    if not manifest.is_file():
        return path, training_data
    try:
        staged = json.loads(manifest.read_text())
        return path / staged["model"], training_data or path / staged["training_data"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Unprocessable(f"{manifest} is not a readable bundle manifest: {exc}") from None


def _profile_outputs(model, settings: ServingSettings, training_data: Path) -> None:
    from serving.reference import profile_outputs

    try:
        profile_outputs(model, database_url=settings.resolved_database_url, cloudsql=settings.cloudsql,
                        deployment=settings.model_name, revision=settings.revision,
                        training_data=training_data, features=settings.feature_names,
                        sample_rows=settings.reference_rows)
    except Exception as exc:  # the database is down: drift of the outputs waits, predictions do not
        log.warning("could not store the outputs' drift reference: %s", str(exc).splitlines()[0][:300])


def _make_logger(settings: ServingSettings):
    if not settings.log_predictions:
        return None
    from serving.prediction_log import PredictionLogger

    remote = None
    if settings.journal_uri:
        from serving.remote_journal import RemoteJournal

        remote = RemoteJournal(settings.journal_uri, settings.model_name)
    return PredictionLogger(settings.resolved_database_url, settings.model_name, cloudsql=settings.cloudsql,
                            sample_rate=settings.log_sample_rate, journal_dir=settings.resolved_journal_dir,
                            remote_journal=remote)


async def _health_servicer() -> health.aio.HealthServicer:
    servicer = health.aio.HealthServicer()
    # The servicer starts with "" SERVING; nothing is served until the model is warm.
    for service in ("", INFERENCE_SERVICE):
        await servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    return servicer


def _build_server(settings: ServingSettings, dataplane: DataPlane, health_servicer, *, shared: bool):
    """A gRPC server with every service; `shared`: its port may have other listeners (SO_REUSEPORT), else
    binding a port another socket listens on fails. grpc sets SO_REUSEPORT by default on Linux: say which."""
    limit = settings.max_message_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 1 if shared else 0),
        *(handover.AGE_OPTIONS if shared else []),
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = (INFERENCE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME)
    reflection.enable_server_reflection(services, server, pool=_reflection_pool())
    return server


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    # Our inference messages live in a private pool (tritonclient may own the default one's `inference.*`);
    # reflection gets a pool with everything this server speaks.
    pool = descriptor_pool.DescriptorPool()
    for module in (pb, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool
