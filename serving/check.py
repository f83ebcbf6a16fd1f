"""`python -m serving.check`: the first step of a revision's Cloud Build, run in the serving base image.

Fetches the model and the training data (gs:// URIs, or local paths), stages them as a bundle (the local
builder's layout: bundle.json, model.keras or model/, training_data.<ext>), loads the model with the server's
own loader and checks its inputs against the training data's feature columns. With `--layer` it also writes
the image layer (a tar with the bundle at `--at`, readable by the server's user) that the next step appends
to the base image.

What the control plane reads back is the step's output, `$BUILDER_OUTPUT/output` (Cloud Build returns it in
`Build.results.build_step_outputs`): one JSON object, `{"features": [...], "model": ..., "training_data": ...}`
on success, `{"error": "..."}` when the model or the data is unusable. The error is also printed as one line
on stderr (the build log) and the exit status is 1, which fails the build.

    python -m serving.check --model gs://b/m.keras --training-data gs://b/train.csv [--label y] \\
        --out /workspace/bundle [--layer /workspace/layer.tar --at /srv/bundle]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

from modelrun.control import inspect
from modelrun.errors import ModelrunError, Unprocessable

MANIFEST = "bundle.json"
OUTPUT_LIMIT = 50_000  # Cloud Build keeps the first 50 KB of a step's output


def fetch(uri: str, dest: Path) -> Path:
    """Copy the object/folder at `uri` (gs:// or a local path) to `dest`."""
    if uri.startswith("gs://"):
        from modelrun import gcs

        return gcs.download(uri, dest)
    source = Path(uri)
    if source.is_dir():
        shutil.copytree(source, dest)
    elif source.is_file():
        shutil.copyfile(source, dest)
    else:
        raise Unprocessable(f"{uri} does not exist")
    return dest


def stage(model_uri: str, data_uri: str, label: str | None, out: Path) -> dict:
    """Write the checked bundle into `out` (emptied first); its manifest."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = fetch(model_uri, out / "model.staging")
    kind = inspect.check_model(model, model_uri)
    model_name = "model" if kind == "savedmodel" else "model.keras"
    model = model.rename(out / model_name)
    data_name = f"training_data{Path(data_uri.rstrip('/')).suffix.lower()}"
    data = fetch(data_uri, out / data_name)
    if data.is_dir():
        raise Unprocessable(f"{data_uri} is a folder; training data must be one CSV, JSON or Parquet file")
    features = inspect.feature_columns(data, data_uri, label)
    from serving.model import load_model  # TensorFlow: the slow part, after the cheap checks

    loaded = load_model(model)
    inspect.check_inputs([inspect.TensorSpec(s.name, s.datatype, list(s.shape)) for s in loaded.inputs], features)
    manifest = {"model": model_name, "training_data": data_name, "features": features}
    (out / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def write_layer(bundle: Path, layer: Path, at: str) -> None:
    """A tar of `bundle` placed at `at`, owned by root and readable by everyone (the server runs as uid 10001)."""
    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    parts = [p for p in at.strip("/").split("/") if p]
    with tarfile.open(layer, "w") as tar:
        for depth in range(1, len(parts)):  # parent folders first, so the layer is well-formed
            info = tarfile.TarInfo("/".join(parts[:depth]))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(owned(info))
        tar.add(bundle, arcname="/".join(parts), filter=owned)


def report(result: dict) -> None:
    """Write the step's output where Cloud Build collects it (when it runs under Cloud Build)."""
    folder = os.environ.get("BUILDER_OUTPUT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "output").write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.check",
                                     description="Stage and check a model and its training data (a build step).")
    parser.add_argument("--model", required=True, help="the model: a .keras file or a SavedModel folder (gs:// or path)")
    parser.add_argument("--training-data", required=True, help="CSV, JSON or Parquet training data (gs:// or path)")
    parser.add_argument("--label", default=None, help="the training data's label column (not a feature)")
    parser.add_argument("--out", required=True, type=Path, help="the bundle folder to write")
    parser.add_argument("--layer", type=Path, default=None, help="also write the image layer tar here")
    parser.add_argument("--at", default="/srv/bundle", help="where the layer puts the bundle in the image")
    args = parser.parse_args(argv)
    try:
        manifest = stage(args.model, args.training_data, args.label or None, args.out)
        result = {"features": manifest["features"], "model": manifest["model"],
                  "training_data": manifest["training_data"]}
        if len(json.dumps(result)) > OUTPUT_LIMIT:
            raise Unprocessable(f"the training data has too many feature columns ({len(manifest['features'])}) "
                                f"to report from a build step (at most {OUTPUT_LIMIT} bytes of names)")
        if args.layer is not None:
            write_layer(args.out, args.layer, args.at)
    except ModelrunError as exc:
        print(f"serving.check: {exc.message}", file=sys.stderr)
        report({"error": exc.message})
        return 1
    report(result)
    print(f"serving.check: staged {manifest['model']} and {manifest['training_data']}; "
          f"features: {', '.join(manifest['features'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)  # skip TensorFlow's slow teardown, as `python -m serving` does
