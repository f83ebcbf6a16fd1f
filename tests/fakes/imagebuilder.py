"""A test-only Builder that makes "images" without Cloud Build: LocalBuilder stages the bundle, which is
pushed to the FakeRegistry as REPOSITORY/NAME:rREVISION; that image is the revision's artifact.
"""

from __future__ import annotations

from pathlib import Path

from modelrun.control.backends import Build
from modelrun.control.backends.local_builder import LocalBuilder
from tests.fakes.registry import FakeRegistry

REPOSITORY = "us-docker.pkg.dev/test/modelrun"


class ImageBuilder:
    def __init__(self, settings, storage, registry: FakeRegistry, repository: str = REPOSITORY):
        self.local = LocalBuilder(settings, storage)
        self.registry = registry
        self.repository = repository

    def build(self, rev) -> Build:
        staged = self.local.build(rev)
        image = f"{self.repository}/{rev.name}:r{rev.revision}"
        if not self.registry.has(image):
            self.registry.push(image, Path(staged.artifact))
        return Build(image, staged.features)

    def cancel(self, handle: dict) -> None:
        pass

    def remove(self, artifact: str) -> None:
        self.registry.delete(artifact)

    def remove_all(self, name: str) -> None:
        for image in self.registry.images():
            if image.startswith(f"{self.repository}/{name}:"):
                self.registry.delete(image)
        self.local.remove_all(name)
