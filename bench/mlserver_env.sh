#!/usr/bin/env bash
# Creates bench/.venv-mlserver with the pins of bench/requirements-mlserver.txt, for MLServer as a peer in
# `make bench` (bench/serving.py, bench/mlserver_runtime.py). Idempotent; prints the venv's python path last.
#   PYTHON=python3.11 bench/mlserver_env.sh
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/venv.sh" mlserver 'import mlserver, tensorflow, keras, google.protobuf as p
print("mlserver", mlserver.__version__, "tensorflow", tensorflow.__version__, "keras", keras.__version__, "protobuf", p.__version__)'
