"""Which log rows drift has counted, so each refresh reads only what is new.

The log is read by its primary key for every deployment at once (ids are global, so a per-deployment
watermark would see other deployments' rows as holes).

Log ids are not committed in id order on MySQL and PostgreSQL (two writers' transactions interleave, and
an INSERT that skips a duplicate can burn an id), so "the highest id seen" is not enough: a row with a
smaller id may still commit later. The state is therefore:
- `watermark`: every id at or below it is counted or will never exist;
- `pending`: ranges of ids above the watermark that are counted already (skipped when read again);
- `horizon`: (the highest id seen, when) while there are holes; once `grace` seconds have passed, holes at
  or below that id are given up on (no writer's transaction lasts that long), and the watermark moves on.
On SQLite ids are assigned and committed one writer at a time, so there are no holes and `pending` stays
empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np


@dataclass
class Watermark:
    watermark: int = 0
    pending: list[list[int]] = field(default_factory=list)  # sorted, disjoint [first, last] ranges
    horizon_id: int | None = None
    horizon_at: datetime | None = None

    def counted(self, ids: np.ndarray) -> np.ndarray | None:
        """For ids read past the watermark: which are counted already (in `pending`)."""
        if not self.pending:
            return None
        done = np.zeros(len(ids), dtype=bool)
        for first, last in self.pending:
            done |= (ids >= first) & (ids <= last)
        return done

    def add(self, ids: np.ndarray) -> None:
        """Record newly counted ids."""
        if not len(ids):
            return
        ids = np.unique(ids)
        breaks = np.flatnonzero(np.diff(ids) != 1)
        starts = np.concatenate([[0], breaks + 1])
        ends = np.concatenate([breaks, [len(ids) - 1]])
        ranges = self.pending + [[int(ids[s]), int(ids[e])] for s, e in zip(starts, ends)]
        self.pending = _merge(ranges)

    def advance(self, now: datetime, grace: float) -> None:
        """Move the watermark over counted ids, and over holes older than `grace` seconds."""
        self._absorb()
        if not self.pending:
            self.horizon_id = self.horizon_at = None
            return
        if self.horizon_id is None:
            self.horizon_id, self.horizon_at = self.pending[-1][1], now
            return
        if now - self.horizon_at >= timedelta(seconds=grace):
            self.watermark = max(self.watermark, self.horizon_id)
            self.pending = [[max(a, self.watermark + 1), b] for a, b in self.pending if b > self.watermark]
            self._absorb()
            self.horizon_id, self.horizon_at = (self.pending[-1][1], now) if self.pending else (None, None)

    def _absorb(self) -> None:
        while self.pending and self.pending[0][0] <= self.watermark + 1:
            self.watermark = max(self.watermark, self.pending.pop(0)[1])


def _merge(ranges: list[list[int]]) -> list[list[int]]:
    merged: list[list[int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return merged
