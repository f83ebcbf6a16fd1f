"""The gRPC edge: each RPC parses its message, calls the data plane, formats the answer.

Errors are mapped to gRPC status codes here and nowhere else: a ModelrunError carries its code and a
message for the caller; anything else is a bug, logged with its traceback and answered INTERNAL with a
generic message.
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import UTC, datetime

import grpc

from modelrun.errors import ModelrunError
from modelrun.proto import inference_pb2 as pb
from modelrun.proto import inference_pb2_grpc as pb_grpc
from serving import codec
from serving.dataplane import DataPlane

log = logging.getLogger(__name__)
INTERNAL_MESSAGE = "internal error in the model server; the details are in its log"


def _status_mapped(method):
    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except ModelrunError as exc:
            await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        meta = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)

    @_status_mapped
    async def ModelMetadata(self, request, context):
        return codec.encode_model_metadata(self.dataplane.model_metadata(request.name, request.version))

    @_status_mapped
    async def ModelInfer(self, request, context):
        started, arrived = time.perf_counter(), datetime.now(UTC)
        self.dataplane.check_model(request.model_name, request.model_version)  # before decoding the body
        infer_request = codec.decode_request(request)
        infer_request.started, infer_request.arrived = started, arrived
        return codec.encode_response(await self.dataplane.infer(infer_request))

    @_status_mapped
    async def ModelConfig(self, request, context):
        return codec.encode_model_config(self.dataplane.model_config(request.name, request.version))

    @_status_mapped
    async def ModelStatistics(self, request, context):
        return codec.encode_model_statistics(self.dataplane.model_statistics(request.name, request.version))
