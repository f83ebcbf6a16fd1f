#!/usr/bin/env bash
# Creates bench/.venv-evidently with the pins of bench/requirements-evidently.txt, for
# bench/evidently_parity.py and bench/evidently_run.py. Idempotent (see bench/venv.sh); prints the venv's
# python path as its last line.
#   PYTHON=python3.11 bench/evidently_env.sh
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/venv.sh" evidently 'import evidently, pandas, pyarrow
print("evidently", evidently.__version__, "pandas", pandas.__version__)'
