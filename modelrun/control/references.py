"""Reference profiles of revisions (design 3.4): made from the training data while a revision builds.

The training data is fetched through the Storage port (any backend), read whole with pandas and profiled
over the feature columns (label removed); the profile is stored with the revision before its model
server starts, so every logged prediction of the revision has a reference to be compared with.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import sqlalchemy as sa

from modelrun.control import inspect
from modelrun.control.models import Revision
from modelrun.db import write_transaction
from modelrun.drift import store
from modelrun.drift.config import drift_config
from modelrun.drift.profile import build_profile
from modelrun.drift.refresh import utcnow
from modelrun.errors import Unprocessable


class References:
    def __init__(self, engine: sa.Engine, storage, *, sample_rows: int):
        self.engine = engine
        self.storage = storage
        self.sample_rows = sample_rows
        self._known: set[tuple[str, int]] = set()

    def ensure(self, rev: Revision, features: list[str]) -> None:
        """Profile the revision's training data unless it is profiled already; Unprocessable when the data
        cannot be profiled or the drift config names a column the training data lacks."""
        key = (rev.name, rev.revision)
        if key in self._known or self._stored(rev):
            self._known.add(key)
            return
        config = drift_config(rev.config)
        unknown = sorted(set(config.features) - set(features))
        if unknown:
            raise Unprocessable(f"the drift config names {', '.join(unknown)}, which "
                                f"{'is not a feature column' if len(unknown) == 1 else 'are not feature columns'} "
                                f"of the training data (features: {', '.join(features)})")
        with tempfile.TemporaryDirectory(prefix="modelrun-profile-") as tmp:
            suffix = Path(rev.training_data_uri.rstrip("/")).suffix.lower()
            path = self.storage.fetch(rev.training_data_uri, Path(tmp) / f"training_data{suffix}")
            frame = inspect.read_table(path, rev.training_data_uri)
        profile = build_profile(frame, features, limit=self.sample_rows)
        with write_transaction(self.engine) as conn:
            store.save_profile(conn, rev.name, rev.revision, "features", profile, utcnow())
        self._known.add(key)

    def _stored(self, rev: Revision) -> bool:
        p = store.profiles
        with self.engine.connect() as conn:
            return conn.execute(sa.select(p.c.revision).where((p.c.deployment == rev.name) & (p.c.revision == rev.revision)
                                                              & (p.c.part == "features"))).first() is not None
