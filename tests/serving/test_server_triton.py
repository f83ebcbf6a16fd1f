"""Triton's ModelConfig and ModelStatistics extensions, read by Triton's own client and by perf_analyzer.

perf_analyzer (shipped in the tritonclient wheel) asks for the model's configuration before it sends a
request; these tests run it for real against a dense8 server. It needs libb64.so.0d (Debian's libb64-0d,
installed by .ci/run) and libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel in requirements.txt; no GPU is
used).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import model_config_pb2

from tests.serving.conftest import NO_LOG, start_servers



def _bench_perf_client():
    """bench/perf_client.py, which knows where perf_analyzer and its CUDA runtime library are (loaded by path:
    bench/ also holds a serving.py, which must not shadow the `serving` package)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "perf_client.py"
    spec = importlib.util.spec_from_file_location("bench_perf_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


perf_client = _bench_perf_client()
PERF_ANALYZER, cuda_runtime_lib = perf_client.PERF_ANALYZER, perf_client.cuda_runtime_lib


def save_fixed_batch(directory: Path) -> Path:
    """A model whose batch dimension is fixed at 2 (input `x` [2, 4] FP32): it cannot be batched."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(4,), batch_size=2, name="x")
    model = keras.Model(inputs, keras.layers.Dense(1, name="y")(inputs), name="fixed2")
    path = directory / "fixed2.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def servers(model_files, tmp_path_factory):
    fixed = save_fixed_batch(tmp_path_factory.mktemp("fixed"))
    specs = {"dense8": (model_files["dense8"], "dense8"), "tabular": (model_files["tabular"], "tabular"),
             "fixed2": (fixed, "fixed2")}
    env = {**NO_LOG, "MODELRUN_MAX_BATCH_SIZE": "64", "MODELRUN_BATCH_MAX_WAIT_MS": "3"}
    with start_servers(specs, env=env) as running:
        yield running


def client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.address)


def tensors(config_tensors) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config_tensors}


# ---- ModelConfig -----------------------------------------------------------------------------------

def test_batchable_model_config_leaves_out_the_batch_dimension(servers):
    config = client(servers["dense8"]).get_model_config("dense8").config
    assert config.name == "dense8"
    assert config.platform
    assert config.max_batch_size == 64  # the server's MODELRUN_MAX_BATCH_SIZE
    assert tensors(config.input) == {"x": ("TYPE_FP32", [8])}
    assert tensors(config.output) == {"y": ("TYPE_FP32", [1])}
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds == 3000  # MODELRUN_BATCH_MAX_WAIT_MS=3


def test_model_config_maps_every_input_type(servers):
    config = client(servers["tabular"]).get_model_config("tabular", model_version="1").config
    assert tensors(config.input) == {"age": ("TYPE_FP32", [1]), "rooms": ("TYPE_INT64", [1]),
                                     "city": ("TYPE_STRING", [1]), "garden": ("TYPE_BOOL", [1])}
    assert tensors(config.output) == {"price": ("TYPE_FP32", [1]), "expensive": ("TYPE_FP32", [1])}


def test_unbatchable_model_config_has_full_dims_and_no_batching(servers):
    config = client(servers["fixed2"]).get_model_config("fixed2").config
    assert config.max_batch_size == 0
    assert tensors(config.input) == {"x": ("TYPE_FP32", [2, 4])}
    assert config.WhichOneof("scheduling_choice") is None


def test_config_and_statistics_of_an_unknown_model_are_not_found(servers):
    c = client(servers["dense8"])
    for call in (c.get_model_config, c.get_inference_statistics):
        with pytest.raises(triton.InferenceServerException) as info:
            call("resnet")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        assert "model 'resnet' is not served here; this server serves 'dense8'" in info.value.message()
    with pytest.raises(triton.InferenceServerException) as info:
        c.get_model_config("dense8", model_version="7")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_other_triton_extensions_stay_unimplemented(servers):
    with pytest.raises(triton.InferenceServerException) as info:
        client(servers["dense8"]).get_model_repository_index()
    assert info.value.status() == str(grpc.StatusCode.UNIMPLEMENTED)


# ---- ModelStatistics -------------------------------------------------------------------------------

def infer_rows(server, rows: int) -> None:
    tensor = triton.InferInput("x", [rows, 8], "FP32")
    tensor.set_data_from_numpy(np.ones((rows, 8), np.float32))
    client(server).infer("dense8", [tensor])


def dense8_stats(server):
    (stats,) = client(server).get_inference_statistics("dense8").model_stats
    return stats


def test_statistics_count_requests_rows_and_model_calls(servers):
    server = servers["dense8"]
    before = dense8_stats(server)
    for rows in (1, 3):
        infer_rows(server, rows)
    bad = triton.InferInput("x", [1, 7], "FP32")
    bad.set_data_from_numpy(np.ones((1, 7), np.float32))
    with pytest.raises(triton.InferenceServerException):
        client(server).infer("dense8", [bad])

    after = dense8_stats(server)
    assert (after.name, after.version) == ("dense8", "1")
    assert after.inference_count - before.inference_count == 4  # rows
    assert after.execution_count - before.execution_count == 2  # sequential requests: one model call each
    success, fail = after.inference_stats.success, after.inference_stats.fail
    assert success.count - before.inference_stats.success.count == 2
    assert success.ns > before.inference_stats.success.ns
    assert fail.count - before.inference_stats.fail.count == 1
    assert after.inference_stats.compute_infer.count - before.inference_stats.compute_infer.count == 2
    assert after.inference_stats.queue.count - before.inference_stats.queue.count == 2
    assert after.last_inference > 0


def test_statistics_without_a_name_cover_the_served_model(servers):
    (stats,) = client(servers["tabular"]).get_inference_statistics().model_stats
    assert stats.name == "tabular"


# ---- perf_analyzer ---------------------------------------------------------------------------------

def test_perf_analyzer_benchmarks_a_modelrun_server(servers, tmp_path):
    lib = cuda_runtime_lib()
    assert lib is not None, "libcudart.so.12 missing: pip install nvidia-cuda-runtime-cu12 (see requirements.txt)"
    assert PERF_ANALYZER.exists(), f"{PERF_ANALYZER} missing: it comes with the tritonclient wheel"
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(lib), os.environ.get("LD_LIBRARY_PATH")]))}
    report = tmp_path / "perf.csv"
    args = [str(PERF_ANALYZER), "-m", "dense8", "-u", servers["dense8"].address, "-i", "grpc",
            "--concurrency-range", "1:2", "--measurement-interval", "500", "-b", "4", "-f", str(report),
            # Any three windows count as stable: this checks that it works, not how fast (CI machines are noisy).
            "--stability-percentage", "999"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Concurrency: 1, throughput:" in output and "Concurrency: 2, throughput:" in output, output
    assert "Server:" in output and "Inference count:" in output, output  # it read ModelStatistics
    header, *rows = report.read_text().splitlines()
    assert header.startswith("Concurrency,Inferences/Second")
    assert len(rows) == 2 and all(float(row.split(",")[1]) > 0 for row in rows), report.read_text()
