"""A stand-in for Artifact Registry shared by the fake Cloud Build and the fake Cloud Run.

Real per-revision images are the serving base image plus one layer holding the revision's bundle at
BUNDLE_MOUNT (the local builder's layout: bundle.json, the model, the training data). Here an image is
that layer's folder: pushing copies a bundle folder under the image's name and digest, and a fake Cloud
Run revision runs `python -m serving` with every BUNDLE_MOUNT path in its environment mapped to it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

BUNDLE_MOUNT = "/srv/bundle"  # where the per-revision layer puts the bundle inside the image


class FakeRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def push(self, image: str, bundle: Path) -> str:
        """Store `bundle` as the layer of `image` (REGION-docker.pkg.dev/PROJECT/REPO/NAME:TAG); its digest."""
        digest = "sha256:" + hashlib.sha256(b"".join(
            p.read_bytes() for p in sorted(Path(bundle).rglob("*")) if p.is_file())).hexdigest()
        target = self._folder(image)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(bundle, target)
        (self.root / f"{_key(image)}.json").write_text(json.dumps({"image": image, "digest": digest}))
        return digest

    def has(self, image: str) -> bool:
        return self._folder(image).is_dir()

    def folder(self, image: str) -> Path:
        """The layer's files; KeyError when the image was never pushed (or was deleted)."""
        target = self._folder(image)
        if not target.is_dir():
            raise KeyError(image)
        return target

    def delete(self, image: str) -> None:
        shutil.rmtree(self._folder(image), ignore_errors=True)
        (self.root / f"{_key(image)}.json").unlink(missing_ok=True)

    def images(self) -> list[str]:
        return sorted(json.loads(p.read_text())["image"] for p in self.root.glob("*.json"))

    def map_environment(self, image: str, env: dict[str, str]) -> dict[str, str]:
        """The container's environment with BUNDLE_MOUNT paths pointing at this image's layer folder."""
        folder = str(self.folder(image))
        return {k: v.replace(BUNDLE_MOUNT, folder) for k, v in env.items()}

    def _folder(self, image: str) -> Path:
        return self.root / _key(image)


def _key(image: str) -> str:
    image = image.split("@", 1)[0]  # a digest reference names the same pushed layer
    return re.sub(r"[^A-Za-z0-9_.-]", "_", image)
