"""The protocol ceiling: a minimal Open Inference Protocol server with no model.

Same transport as the model server (grpc.aio, the generated code in modelrun.proto, the same channel
options), so the gap between this and `python -m serving` is what the model, codecs, batching and logging
cost. ModelInfer parses the request (names, shape, the raw FP32 bytes) and returns a fixed answer: one FP32
output per row, raw in and raw out. Health reports SERVING at once.

    python bench/ceiling.py --port N [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modelrun.proto import inference_pb2 as pb  # noqa: E402
from modelrun.proto import inference_pb2_grpc as pb_grpc  # noqa: E402

MAX_MESSAGE = 64 * 1024 * 1024
SERVER_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE),
                  ("grpc.so_reuseport", 0)]  # as serving/server.py
MODEL = "ceiling"
FEATURES = 8
MAX_BATCH = 64


class Ceiling(pb_grpc.GRPCInferenceServiceServicer):
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="ceiling", version="0")

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request, context):
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name or MODEL, platform="none", versions=["1"],
            inputs=[tensor(name="features", datatype="FP32", shape=[-1, FEATURES])],
            outputs=[tensor(name="output_0", datatype="FP32", shape=[-1, 1])],
        )

    async def ModelConfig(self, request, context):
        # Triton's extension, which perf_analyzer reads first: batched along the first dimension, like dense8.
        config = pb.ModelConfig(name=request.name or MODEL, platform="none", max_batch_size=MAX_BATCH,
                                input=[pb.ModelInput(name="features", data_type=pb.TYPE_FP32, dims=[FEATURES])],
                                output=[pb.ModelOutput(name="output_0", data_type=pb.TYPE_FP32, dims=[1])])
        return pb.ModelConfigResponse(config=config)

    async def ModelInfer(self, request, context):
        spec = request.inputs[0]
        rows = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(tuple(spec.shape))
        n = rows.shape[0]
        output = pb.ModelInferResponse.InferOutputTensor(name="output_0", datatype="FP32", shape=[n, 1])
        return pb.ModelInferResponse(model_name=request.model_name, id=request.id, outputs=[output],
                                     raw_output_contents=[bytes(4 * n)])


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Ceiling(), server)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
