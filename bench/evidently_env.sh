#!/usr/bin/env bash
# Creates bench/.venv-evidently with the pins of bench/requirements-evidently.txt, for
# bench/evidently_parity.py and bench/evidently_run.py. Idempotent: it does nothing when the venv already
# holds exactly these pins (a stamp records the requirements file's checksum), and reinstalls when the file
# changed. Prints the venv's python path as its last line.
#   PYTHON=python3.11 bench/evidently_env.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-evidently"
reqs="$here/requirements-evidently.txt"
stamp="$venv/.installed"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

want="$(sha256sum "$reqs" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
    echo "$venv/bin/python"
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q -r "$reqs" >&2
"$venv/bin/python" -c 'import evidently, pandas, pyarrow
print("evidently", evidently.__version__, "pandas", pandas.__version__)' >&2
echo "$want" > "$stamp"
echo "$venv/bin/python"
