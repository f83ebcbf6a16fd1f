"""The function source archive (terraform/function_source.py) holds what the entry points import and nothing
more, and its requirements alone install a working control plane: in a fresh virtualenv, `main` imports with
every entry point Terraform names and every module reachable from it, and TensorFlow is not there."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import venv
import zipfile

import pytest

from tests.terraform.config import MAIN, ROOT, load

SOURCE_BUILDER = ROOT / "terraform" / "function_source.py"


def builder():
    spec = importlib.util.spec_from_file_location("function_source", SOURCE_BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{line!r} is not pinned with =="
            found[re.sub(r"\[.*\]", "", name).lower()] = version
    return found


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    out = tmp_path_factory.mktemp("source") / "function-source.zip"
    subprocess.run([sys.executable, str(SOURCE_BUILDER), str(out)], check=True, cwd=ROOT)
    return out


def test_the_archive_holds_main_the_packages_and_only_the_serving_modules_imported(archive):
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        assert z.read("main.py") == MAIN.read_bytes()
        requirements = z.read("requirements.txt").decode()
    assert {"modelrun/__init__.py", "modelrun/control/openapi.yaml", "dashboard/index.html"} <= names
    serving = sorted(n for n in names if n.startswith("serving/"))
    assert serving == ["serving/__init__.py", "serving/prediction_journal.py", "serving/remote_journal.py"]
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "functions/", "bench/"))]
    # No TensorFlow, and every pin is the repository's own.
    wanted, repo = pins(requirements), pins((ROOT / "requirements.txt").read_text())
    assert not {"tensorflow", "tensorflow-cpu", "keras"} & set(wanted)
    assert {name: version for name, version in wanted.items() if repo.get(name) != version} == {}
    assert "functions-framework" in wanted


def test_the_archive_is_the_same_for_the_same_sources(archive, tmp_path):
    again = tmp_path / "again.zip"
    subprocess.run([sys.executable, str(SOURCE_BUILDER), str(again)], check=True, cwd=ROOT)
    assert again.read_bytes() == archive.read_bytes()  # same md5: Terraform does not redeploy


@pytest.mark.slow
def test_entry_points_import_in_a_fresh_virtualenv_from_the_archive_alone(archive, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(archive) as z:
        z.extractall(site)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", "requirements.txt"], cwd=site,
                             capture_output=True, text=True, timeout=1500)
    assert install.returncode == 0, install.stderr[-3000:]

    entry_points = sorted(load().locals["functions"])
    modules = sorted(m for m in builder().reachable_modules(MAIN) if m != "main")
    script = (
        "import importlib, importlib.util, json, sys\n"
        "import main\n"
        f"missing = [n for n in {entry_points!r} if not callable(getattr(main, n, None))]\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps({'missing': missing, 'tensorflow': importlib.util.find_spec('tensorflow') is not None,\n"
        "                  'main': main.__file__}))\n")
    # -I: nothing from this repository or the user's site leaks in; the archive's folder is the only source.
    run = subprocess.run([str(python), "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n" + script],
                         cwd=site, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"missing": [], "tensorflow": False, "main": str(site / "main.py")}
