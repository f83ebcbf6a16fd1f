"""Builder on this machine: stage model + training data into $MODELRUN_HOME/bundles/<name>/<revision>/.

A bundle is written into a temporary folder and renamed into place when complete, so a crash never
leaves a half bundle that looks finished; a finished bundle is reused. Sources are copied, never moved.

    bundle.json              {"model": "model.keras" | "model", "training_data": "...", "features": [...]}
    model.keras | model/     the Keras file or the SavedModel folder
    training_data.<ext>      the training data, as uploaded
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from modelrun.control import inspect
from modelrun.control.backends import Build, Storage
from modelrun.control.models import Revision
from modelrun.errors import Unprocessable
from modelrun.settings import Settings

MANIFEST = "bundle.json"


class LocalBuilder:
    def __init__(self, settings: Settings, storage: Storage):
        self.root = settings.bundles_dir
        self.storage = storage

    def build(self, rev: Revision) -> Build:
        final = self.root / rev.name / str(rev.revision)
        if (final / MANIFEST).is_file():
            return Build(str(final), read_manifest(final)["features"])
        parent = final.parent
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f".{rev.revision}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # a folder without bundle.json is not ours to trust
            shutil.rmtree(final)
        tmp = parent / f".{rev.revision}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            features = self._stage(rev, tmp)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Build(str(final), features)

    def _stage(self, rev: Revision, tmp: Path) -> list[str]:
        model = self.storage.fetch(rev.model_uri, tmp / "model.staging")
        kind = inspect.check_model(model, rev.model_uri)
        model_name = "model" if kind == "savedmodel" else "model.keras"
        model.rename(tmp / model_name)
        suffix = Path(rev.training_data_uri.rstrip("/")).suffix.lower()
        data_name = f"training_data{suffix}"
        data = self.storage.fetch(rev.training_data_uri, tmp / data_name)
        if data.is_dir():
            raise Unprocessable(f"{rev.training_data_uri} is a folder; training data must be one CSV, JSON "
                                f"or Parquet file")
        features = inspect.feature_columns(data, rev.training_data_uri, rev.config.get("label"))
        declared = inspect.keras_inputs(tmp / model_name) if kind == "keras" else None
        if declared:  # fail before starting a server; SavedModels are checked once they serve
            inspect.check_inputs(declared, features)
        (tmp / MANIFEST).write_text(json.dumps({"model": model_name, "training_data": data_name,
                                                "features": features}))
        return features

    def cancel(self, handle: dict) -> None:
        pass  # local builds finish within `build`

    def remove(self, artifact: str) -> None:
        path = Path(artifact)
        if path.is_relative_to(self.root):
            shutil.rmtree(path, ignore_errors=True)

    def remove_all(self, name: str) -> None:
        shutil.rmtree(self.root / name, ignore_errors=True)


def read_manifest(bundle: Path) -> dict:
    return json.loads((Path(bundle) / MANIFEST).read_text())
