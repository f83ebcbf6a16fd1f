"""Settings: environment, flags over environment, defaults, and one clear line + exit 2 when wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.__main__ import describe, parse_args
from serving.settings import MIB, ServingSettings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("MODELRUN_") or name == "PORT":
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults(clean_env):
    settings = ServingSettings(model_uri="m.keras", model_name="m")
    assert (settings.port, settings.host, settings.revision) == (8080, "0.0.0.0", 1)
    assert settings.max_message_bytes == 64 * MIB
    assert settings.batch_max_wait_ms == 8.0 and settings.max_batch_size >= 1
    assert settings.log_predictions is True and settings.log_sample_rate == 1.0
    assert settings.feature_names is None
    home = Path("~/.modelrun").expanduser()
    assert settings.resolved_database_url == f"sqlite:///{home / 'modelrun.db'}"
    assert settings.resolved_journal_dir == home / "journal" / "m"


def test_everything_from_the_environment(clean_env, tmp_path):
    env = {
        "MODELRUN_MODEL_URI": "file:///models/m.keras", "MODELRUN_MODEL_NAME": "houses", "PORT": "9001",
        "MODELRUN_HOST": "127.0.0.1", "MODELRUN_DATABASE_URL": "postgresql://db/x", "MODELRUN_REVISION": "4",
        "MODELRUN_FEATURE_NAMES": "age, rooms ,city", "MODELRUN_MAX_MESSAGE_BYTES": "1024",
        "MODELRUN_MAX_BATCH_SIZE": "32", "MODELRUN_BATCH_MAX_WAIT_MS": "2.5", "MODELRUN_LOG_PREDICTIONS": "false",
        "MODELRUN_LOG_SAMPLE_RATE": "0.25", "MODELRUN_JOURNAL_DIR": str(tmp_path / "j"),
        "MODELRUN_HOME": str(tmp_path / "home"),
    }
    for name, value in env.items():
        clean_env.setenv(name, value)
    s = ServingSettings()
    assert (s.model_uri, s.model_name, s.port, s.host, s.revision) == ("file:///models/m.keras", "houses", 9001,
                                                                       "127.0.0.1", 4)
    assert s.resolved_database_url == "postgresql://db/x"
    assert s.feature_names == ["age", "rooms", "city"]
    assert (s.max_message_bytes, s.max_batch_size, s.batch_max_wait_ms) == (1024, 32, 2.5)
    assert (s.log_predictions, s.log_sample_rate) == (False, 0.25)
    assert s.resolved_journal_dir == tmp_path / "j"
    assert ServingSettings(journal_dir=None).resolved_journal_dir == tmp_path / "home" / "journal" / "houses"


def test_empty_feature_names_mean_unset(clean_env):
    clean_env.setenv("MODELRUN_FEATURE_NAMES", "")
    assert ServingSettings(model_uri="m", model_name="m").feature_names is None


def test_flags_override_the_environment(clean_env):
    clean_env.setenv("MODELRUN_MODEL_URI", "env.keras")
    clean_env.setenv("MODELRUN_MODEL_NAME", "env-name")
    clean_env.setenv("PORT", "9001")
    s = ServingSettings(**parse_args(["--model", "flag.keras", "--port", "7000", "--host", "127.0.0.1"]))
    assert (s.model_uri, s.model_name, s.port, s.host) == ("flag.keras", "env-name", 7000, "127.0.0.1")


@pytest.mark.parametrize("env, expected", [
    ({"MODELRUN_LOG_SAMPLE_RATE": "1.5"}, "MODELRUN_LOG_SAMPLE_RATE='1.5': Input should be less than or equal to 1"),
    ({"PORT": "http"}, "--port / PORT='http'"),
    ({"MODELRUN_MAX_MESSAGE_BYTES": "0"}, "MODELRUN_MAX_MESSAGE_BYTES='0'"),
    ({"MODELRUN_FEATURE_NAMES": "a,,b"}, "MODELRUN_FEATURE_NAMES"),
    ({"MODELRUN_MODEL_NAME": ""}, "--name / MODELRUN_MODEL_NAME=''"),
])
def test_bad_settings_are_named(clean_env, env, expected):
    clean_env.setenv("MODELRUN_MODEL_URI", "m.keras")
    clean_env.setenv("MODELRUN_MODEL_NAME", "m")
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(Exception) as error:
        ServingSettings()
    assert expected in describe(error.value)


def run_serving(*args, env=None):
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELRUN_") and k != "PORT"}
    return subprocess.run([sys.executable, "-m", "serving", *args], cwd=REPO, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def test_missing_settings_exit_2_with_one_line():
    result = run_serving("--name", "m")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["serving: invalid settings: --model / MODELRUN_MODEL_URI is required"]


def test_bad_environment_exits_2_with_one_line():
    result = run_serving("--model", "m.keras", "--name", "m", env={"MODELRUN_REVISION": "zero"})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "MODELRUN_REVISION='zero'" in line
