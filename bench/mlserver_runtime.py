"""MLServer 1.7.1 as a peer in `make bench`: a small TensorFlow runtime for it, and the process that serves it.

Runs only in bench/.venv-mlserver (made by bench/mlserver_env.sh; MLServer needs protobuf < 7):

    bench/.venv-mlserver/bin/python bench/mlserver_runtime.py --model dense8.keras --name dense8 --port N \
        --http-port M --model-config HEX

MLServer has no TensorFlow runtime of its own, so `KerasRuntime` is one: load() loads the .keras file the
way modelrun's server loads it (Keras, compile=False, one traced tf.function, TensorFlow on one intra-op and
one inter-op thread), predict() decodes the FP32 input, calls the model and encodes the FP32 output. It calls
the traced function eagerly, as modelrun does for a model it cannot run in graph mode (modelrun runs a small
model like this one through a tf.compat.v1.Session; this runtime is left as it was, a plain MLServer runtime).

Settings chosen for a fair comparison on a 2-core machine shared with the load generator:
- parallel_workers = 0: inference in the server's own process, as modelrun does (one process, its event loop
  plus a model thread); MLServer's default (1 worker process) adds a hop between processes per batch;
- adaptive batching of up to 256 rows per call and at most 2 ms of waiting, kept as they were when modelrun's
  default was 2 ms too. modelrun now waits up to 8 ms, but a call of its starts as soon as it holds as many
  requests as recent calls did; MLServer has no early start and always waits the whole max_batch_time, also
  for a sequential caller, so a longer wait would only slow it down: 2 ms is the fairer setting for it;
- no metrics endpoint and no debug access log (its REST server cannot be turned off; it is idle).

perf_analyzer asks Triton's ModelConfig before it sends a request, which MLServer does not implement. The
launcher adds that one method to MLServer's gRPC server as a fixed answer: the serialized ModelConfigResponse
passed as --model-config (bench/serving.py encodes it with modelrun's protobuf code, which protobuf 6 cannot
load). ModelInfer is MLServer's own, untouched.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import grpc
from mlserver import MLModel, MLServer
from mlserver.codecs import NumpyCodec
from mlserver.grpc.server import GRPCServer
from mlserver.settings import ModelParameters, ModelSettings, Settings
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor

FEATURES = 8


class KerasRuntime(MLModel):
    async def load(self) -> bool:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf

        try:  # as serving/model.py: one thread each, set before TensorFlow's runtime starts
            tf.config.threading.set_inter_op_parallelism_threads(1)
            tf.config.threading.set_intra_op_parallelism_threads(1)
        except RuntimeError:
            pass
        model = keras.saving.load_model(self.settings.parameters.uri, safe_mode=True, compile=False)
        spec = tf.TensorSpec([None, FEATURES], tf.float32)
        self._call = tf.function(lambda x: model(x, training=False), input_signature=[spec],
                                 autograph=False).get_concrete_function()
        self._keras_model = model  # keeps the variables alive
        self._tf = tf
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0])
        prediction = self._call(self._tf.constant(rows, dtype=self._tf.float32)).numpy()
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output("prediction", prediction)])


def add_model_config(answer: bytes) -> None:
    """Make MLServer's gRPC server answer inference.GRPCInferenceService/ModelConfig with `answer`."""
    create = GRPCServer._create_server

    def create_with_model_config(self):
        server = create(self)
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: answer,
                                                      request_deserializer=None, response_serializer=None)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelConfig": handler})])
        return server

    GRPCServer._create_server = create_with_model_config


async def serve(args) -> None:
    settings = Settings(host="127.0.0.1", grpc_port=args.port, http_port=args.http_port, metrics_endpoint=None,
                        parallel_workers=0, debug=False, load_models_at_startup=False)
    model = ModelSettings(
        name=args.name, implementation=KerasRuntime, parameters=ModelParameters(uri=args.model),
        max_batch_size=256, max_batch_time=0.002,
        inputs=[MetadataTensor(name="features", datatype="FP32", shape=[-1, FEATURES])],
        outputs=[MetadataTensor(name="prediction", datatype="FP32", shape=[-1, 1])])
    await MLServer(settings).start([model])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the .keras file")
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("--port", type=int, required=True, help="gRPC port")
    parser.add_argument("--http-port", type=int, required=True, help="REST port (MLServer always starts one)")
    parser.add_argument("--model-config", required=True, help="hex of the serialized ModelConfigResponse")
    args = parser.parse_args(argv)
    add_model_config(bytes.fromhex(args.model_config))
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
