#!/usr/bin/env bash
# Regenerates modelrun/proto/ from protos/inference.proto (or into $1, for the staleness check).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-modelrun/proto}"
python="${PYTHON:-python}"
"$python" -m grpc_tools.protoc -I protos --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" protos/inference.proto
# protoc writes a top-level import; make it a package import.
sed -i 's/^import inference_pb2 as/from modelrun.proto import inference_pb2 as/' "$out/inference_pb2_grpc.py"
# tritonclient registers the same `inference.*` names in protobuf's default pool; keep ours in a pool
# of their own so both can live in one process (tests and benchmarks use both).
sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = POOL.AddSerializedFile(/' "$out/inference_pb2.py"
