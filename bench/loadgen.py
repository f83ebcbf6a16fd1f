"""Closed-loop load generator for one V2 `ModelInfer` target (run as its own process by bench/serving.py).

C tasks share one grpc.aio channel; each sends one request at a time (raw FP32 [1, F] with a fresh random
row and a unique request id), waits for the answer and sends the next. Requests started during the warm-up
are not measured. Prints one JSON object: measured requests, rps, p50/p99 latency in ms, errors, and `ok_total`
(every answered request, warm-up included: what the prediction log must hold).

    python bench/loadgen.py --target 127.0.0.1:PORT --model dense8 --concurrency 32 --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modelrun.proto import inference_pb2 as pb  # noqa: E402
from modelrun.proto import inference_pb2_grpc as pb_grpc  # noqa: E402

MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ok_total = 0
        self.errors: dict[str, int] = {}


async def _worker(stub, model: str, tensor, rng: np.random.Generator, prefix: str, measure_from: float,
                  stop_at: float, stats: Stats) -> None:
    n, features = 0, tensor.shape[-1]
    while (start := time.perf_counter()) < stop_at:
        row = rng.standard_normal(features, dtype=np.float32).tobytes()
        request = pb.ModelInferRequest(model_name=model, id=f"{prefix}-{n}", inputs=[tensor], raw_input_contents=[row])
        n += 1
        try:
            await stub.ModelInfer(request)
        except grpc.aio.AioRpcError as exc:
            stats.errors[exc.code().name] = stats.errors.get(exc.code().name, 0) + 1
            continue
        stats.ok_total += 1
        if start >= measure_from:
            stats.latencies.append(time.perf_counter() - start)


async def run(target: str, model: str, concurrency: int, warmup: float, duration: float, seed: int) -> dict:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=30)
        spec = meta.inputs[0]
        features = int(spec.shape[-1])
        tensor = pb.ModelInferRequest.InferInputTensor(name=spec.name, datatype="FP32", shape=[1, features])
        stats = Stats()
        run_id = uuid.uuid4().hex[:10]
        begin = time.perf_counter()
        measure_from, stop_at = begin + warmup, begin + warmup + duration
        await asyncio.gather(*(
            _worker(stub, model, tensor, np.random.default_rng([seed, i]), f"{run_id}-{i}", measure_from, stop_at, stats)
            for i in range(concurrency)
        ))
        # Requests started before stop_at finish after it: the window ends with the last measured answer.
        window = max(time.perf_counter() - measure_from, 1e-9)
    ms = np.array(stats.latencies) * 1000.0
    return {
        "concurrency": concurrency,
        "requests": len(ms),
        "seconds": round(window, 3),
        "rps": len(ms) / window,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "ok_total": stats.ok_total,
        "client_cpu_us": time.process_time() * 1e6 / max(stats.ok_total, 1),  # incl. start-up; a rough figure
        "errors": stats.errors,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of the V2 gRPC server")
    parser.add_argument("--model", required=True, help="model name sent in every request")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight (one per task)")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of unmeasured load first")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.target, args.model, args.concurrency, args.warmup, args.duration, args.seed))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
