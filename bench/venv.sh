#!/usr/bin/env bash
# Makes bench/.venv-NAME with the pins of bench/requirements-NAME.txt: a yardstick's own virtualenv, apart from the
# project's. Idempotent: nothing happens when the venv already holds exactly these pins (a stamp records the
# requirements file's checksum); it reinstalls when the file changed. CHECK (python code) runs in the venv after
# installing, to prove the imports work. Prints the venv's python path as its last line.
#   PYTHON=python3.11 bench/venv.sh NAME [CHECK]
set -euo pipefail

name="$1"
check="${2:-}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-$name"
reqs="$here/requirements-$name.txt"
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
[[ -z "$check" ]] || "$venv/bin/python" -c "$check" >&2
echo "$want" > "$stamp"
echo "$venv/bin/python"
