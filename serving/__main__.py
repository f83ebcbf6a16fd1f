"""`python -m serving`: read the settings (flags override the environment), run the server, exit.

Exit codes: 0 after a clean stop, 1 when the model cannot be loaded or the port bound, 2 for bad settings.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import sys

from pydantic import ValidationError

from serving.settings import ServingSettings

# Flag -> settings field. Everything else comes from MODELRUN_* variables only.
FLAGS = {
    "--model": "model_uri", "--name": "model_name", "--port": "port", "--admin-port": "admin_port", "--host": "host",
    "--revision": "revision", "--database-url": "database_url", "--feature-names": "feature_names",
}
ENV_NAMES = {"port": "PORT"}  # fields whose variable has no MODELRUN_ prefix
ALIASES = {"PORT": "port", "MODELRUN_PORT": "port"}  # what pydantic reports for an aliased field


def parse_args(argv: list[str] | None) -> dict:
    env_only = [f"  {_env_name(name)}: {' '.join((field.description or '').split())}"
                for name, field in ServingSettings.model_fields.items()
                if name not in FLAGS.values()]
    parser = argparse.ArgumentParser(prog="python -m serving", description="Serve one TensorFlow/Keras model "
                                     "over the Open Inference Protocol (gRPC). Every flag can also be set "
                                     "from the environment (MODELRUN_*, PORT); a flag wins.",
                                     epilog="environment only:\n" + "\n".join(env_only),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, field in FLAGS.items():
        doc = ServingSettings.model_fields[field].description or ""
        parser.add_argument(flag, dest=field, default=None, metavar=flag[2:].upper().replace("-", "_"),
                            help=f"{doc} [env {_env_name(field)}]")
    args = parser.parse_args(argv)
    return {field: value for field, value in vars(args).items() if value is not None}


def _env_name(field: str) -> str:
    return ENV_NAMES.get(field, f"MODELRUN_{field.upper()}")


def describe(error: ValidationError) -> str:
    """One line naming every bad or missing setting by its flag/variable."""
    problems = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        field = ALIASES.get(field, field)
        flag = next((f for f, name in FLAGS.items() if name == field), None)
        where = f"{flag} / {_env_name(field)}" if flag else _env_name(field)
        if item["type"] == "missing":
            problems.append(f"{where} is required")
        else:
            problems.append(f"{where}={item.get('input')!r}: {item['msg']}")
    return "invalid settings: " + "; ".join(problems)


def main(argv: list[str] | None = None) -> int:
    overrides = parse_args(argv)  # argparse itself exits 2 on an unknown flag
    try:
        settings = ServingSettings(**overrides)
    except ValidationError as exc:
        print(f"serving: {describe(exc)}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("tensorflow") is None:  # found without importing it (that takes seconds)
        print(f"serving: TensorFlow is not installed for {sys.executable}: install the model server with "
              f"`pip install 'modelrun[serving]'`", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from serving.server import serve

    return asyncio.run(serve(settings))


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    sys.stdout.flush()
    # Skip interpreter teardown: it would wait for a model thread still importing TensorFlow after an
    # early stop, and TensorFlow's own teardown adds nothing once the log is flushed.
    os._exit(code)
