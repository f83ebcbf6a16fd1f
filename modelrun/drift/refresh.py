"""Incremental drift: count new prediction-log rows into stored aggregates, then rebuild the reports.

A refresh reads only log rows past the watermark (watermark.py), page by page, for every deployment at
once. Each deployment's value rows are aggregated per revision against that revision's own reference,
into buckets: "all" (the revision's whole life), one per UTC day, and one per hour for the last 25 hours
(the rolling 24 h window is the merge of its hours). Rows older than their revision's profile belong to an
earlier deployment of the same name and are left out. The buckets' changes and the new watermark are
written in one transaction that first bumps the state's version, so two refreshers never count a row twice
(the loser's work is dropped and `Busy` raised). Reports are then built from the stored buckets:
"all" for the serving revision, "last-24h", and each UTC day; a window holding rows of several revisions
reports the newest and sums up the others, each judged against its own reference.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from modelrun.db import create_schema, write_transaction
from modelrun.drift import store
from modelrun.drift.aggregate import RESERVOIR_ROWS, Aggregate
from modelrun.drift.config import DriftConfig, drift_config
from modelrun.drift.logread import CHUNK_ROWS, Chunk, read_pages
from modelrun.drift.profile import OUTPUT_PREFIX, build_profile
from modelrun.drift.report import build_report, iso
from modelrun.drift.watermark import Watermark

EPOCH = datetime(1970, 1, 1)
HOURS_KEPT = 25
SCOPE = "predictions"


class Busy(Exception):
    """Another refresher wrote first; nothing of this one's was kept."""


@dataclass
class Target:
    """What a refresh needs to know of a deployment (the control plane's view of it)."""

    name: str
    status: str
    revision: int  # the newest
    serving_revision: int | None
    config: dict


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Refresher:
    def __init__(self, engine: sa.Engine, *, reservoir: int = RESERVOIR_ROWS, gap_grace: float = 120.0,
                 chunk_rows: int = CHUNK_ROWS):
        self.engine = engine
        self.reservoir, self.gap_grace, self.chunk_rows = reservoir, gap_grace, chunk_rows
        self._lock = threading.Lock()
        self._schema_ready = False

    # ---- the whole refresh ----------------------------------------------------------------------

    def refresh(self, targets: list[Target], now: datetime | None = None) -> dict[str, list[dict]]:
        """Count what is new, then return {deployment: its window reports} for every target."""
        with self._lock:
            now = now or utcnow()
            if not self._schema_ready:
                create_schema(self.engine)
                self._schema_ready = True
            configs = {t.name: drift_config(t.config) for t in targets}
            with self.engine.connect() as conn:
                profiles = {t.name: store.load_profiles(conn, t.name) for t in targets}
                mark, version = self._state(conn)
            deltas: dict[tuple, Aggregate] = {}
            new_outputs = {}
            for target in targets:
                for revision, entry in profiles[target.name].items():
                    if not entry["has_outputs"]:
                        outputs = self._outputs_from_production(target.name, revision, entry, configs[target.name])
                        if outputs is not None:
                            new_outputs[(target.name, revision)] = outputs
                            self._recount(target.name, revision, entry, configs[target.name], mark, deltas, now)
            for page in read_pages(self.engine, mark.watermark, chunk_rows=self.chunk_rows, counted=mark.counted):
                for name, chunk in page.chunks.items():
                    if name in profiles:
                        self._count(chunk, name, profiles[name], configs[name], deltas, now)
                mark.add(page.ids)
            mark.advance(now, self.gap_grace)
            self._write(mark, version, deltas, profiles, now, new_outputs)
            touched_days = {(k[0], k[3]) for k in deltas if k[2] == "day"}
            return {t.name: self._reports(t, profiles[t.name], configs[t.name], touched_days, now) for t in targets}

    def _state(self, conn) -> tuple[Watermark, int | None]:
        row = conn.execute(sa.select(store.state).where(store.state.c.scope == SCOPE)).first()
        if row is None:
            return Watermark(), None
        return Watermark(row.watermark, json.loads(row.pending), row.horizon_id, row.horizon_at), row.version

    # ---- counting -------------------------------------------------------------------------------

    def _count(self, chunk: Chunk, name: str, revisions: dict, config: DriftConfig, deltas: dict,
               now: datetime) -> None:
        capacity = config.reservoir or self.reservoir
        recent = np.datetime64(now, "h") - np.timedelta64(HOURS_KEPT - 1, "h")
        for revision in np.unique(chunk.revision).tolist():
            entry = revisions.get(revision)
            if entry is None:
                continue  # no reference (built before drift existed, or its profile failed)
            keep = (chunk.revision == revision) & (chunk.ts >= np.datetime64(entry["created_at"], "us"))
            index = np.flatnonzero(keep)
            if not len(index):
                continue
            profile = entry["profile"]
            hours = chunk.ts[index].astype("datetime64[h]")
            for hour in np.unique(hours):
                part = index[hours == hour]
                agg = Aggregate(profile, capacity)
                agg.add(profile, {c: values[part] for c, values in chunk.columns.items()}, chunk.prio[part])
                start = hour.astype(datetime)
                day = datetime(start.year, start.month, start.day)
                keys = [(name, revision, "all", EPOCH), (name, revision, "day", day)]
                if hour >= recent:
                    keys.append((name, revision, "hour", start))
                for key in keys:
                    if key in deltas:
                        deltas[key].merge(agg)
                    else:
                        deltas[key] = _copy(agg, profile)

    # ---- the outputs' reference from production, when the model server could not make one ------------

    def _outputs_from_production(self, name: str, revision: int, entry: dict, config: DriftConfig):
        """The outputs' profile from the revision's first `min_rows` production rows (its first window),
        added to `entry`; None while it has fewer rows than that."""
        since = np.datetime64(entry["created_at"], "us")
        parts = []
        for page in read_pages(self.engine, 0, chunk_rows=config.min_rows, only=(name, revision)):
            chunk = page.chunks.get(name)
            if chunk is not None:
                keep = np.flatnonzero(chunk.ts >= since)
                parts.append({c[len(OUTPUT_PREFIX):]: values[keep] for c, values in chunk.columns.items()
                              if c.startswith(OUTPUT_PREFIX)})
            if sum(len(next(iter(p.values()), ())) for p in parts) >= config.min_rows:
                break
        names = [c for c in (parts[0] if parts else {})]
        outputs = {c: np.concatenate([np.asarray(p[c], dtype=object if isinstance(p[c], pd.Categorical) else None)
                                      for p in parts if c in p])[:config.min_rows] for c in names}
        if not outputs or len(next(iter(outputs.values()))) < config.min_rows:
            return None
        profile = build_profile(pd.DataFrame(outputs), limit=config.min_rows)
        for column in profile.columns:
            column.name = OUTPUT_PREFIX + column.name
        entry["profile"].columns.extend(profile.columns)
        entry.update(has_outputs=True, outputs_source="production")
        return profile

    def _recount(self, name: str, revision: int, entry: dict, config: DriftConfig, mark: Watermark, deltas: dict,
                 now: datetime) -> None:
        """Count again, now with its outputs, what was counted of a revision (its buckets are replaced)."""
        highest = mark.pending[-1][1] if mark.pending else mark.watermark

        def not_counted(ids: np.ndarray) -> np.ndarray:
            above = ids > mark.watermark
            done = mark.counted(ids)
            return above & ~done if done is not None else above

        for page in read_pages(self.engine, 0, chunk_rows=self.chunk_rows, counted=not_counted,
                               only=(name, revision), until_id=highest):
            if name in page.chunks:
                self._count(page.chunks[name], name, {revision: entry}, config, deltas, now)

    # ---- writing --------------------------------------------------------------------------------

    def _write(self, mark: Watermark, version: int | None, deltas: dict, profiles: dict, now: datetime,
               new_outputs: dict) -> None:
        b = store.buckets
        try:
            with write_transaction(self.engine) as conn:
                values = {"watermark": mark.watermark, "pending": json.dumps(mark.pending),
                          "horizon_id": mark.horizon_id, "horizon_at": mark.horizon_at, "refreshed_at": now}
                if version is None:
                    conn.execute(store.state.insert().values(scope=SCOPE, version=1, **values))
                else:
                    bumped = conn.execute(store.state.update().where((store.state.c.scope == SCOPE)
                                                                     & (store.state.c.version == version))
                                          .values(version=version + 1, **values))
                    if bumped.rowcount != 1:
                        raise Busy("another drift refresh ran at the same time")
                for (name, revision), outputs in new_outputs.items():
                    store.save_profile(conn, name, revision, "outputs", outputs, now, source="production",
                                       error=profiles[name][revision]["outputs_error"])
                    conn.execute(b.delete().where((b.c.deployment == name) & (b.c.revision == revision)))
                for (name, revision, period, start), delta in deltas.items():
                    profile = profiles[name][revision]["profile"]
                    where = ((b.c.deployment == name) & (b.c.revision == revision) & (b.c.period == period)
                             & (b.c.start == start))
                    stored = conn.execute(sa.select(b.c.data).where(where)).scalar()
                    if stored is not None:
                        merged = Aggregate.from_bytes(stored, profile)
                        merged.merge(delta)
                        conn.execute(b.update().where(where).values(rows=merged.rows, data=merged.to_bytes(),
                                                                    updated_at=now))
                    else:
                        conn.execute(b.insert().values(deployment=name, revision=revision, period=period, start=start,
                                                       rows=delta.rows, data=delta.to_bytes(), updated_at=now))
                conn.execute(b.delete().where((b.c.period == "hour")
                                              & (b.c.start < now - timedelta(hours=HOURS_KEPT))))
        except sa.exc.IntegrityError:
            raise Busy("another drift refresh ran at the same time") from None

    # ---- reports --------------------------------------------------------------------------------

    def _reports(self, target: Target, revisions: dict, config: DriftConfig, touched_days: set,
                 now: datetime) -> list[dict]:
        if not revisions:
            return []
        b, r = store.buckets, store.reports
        hour_now = now.replace(minute=0, second=0, microsecond=0)
        since = hour_now - timedelta(hours=23)
        first_day = (now - timedelta(days=config.days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
        serving = target.serving_revision or max(revisions)
        mine = b.c.deployment == target.name
        with self.engine.connect() as conn:
            known = {w for w, in conn.execute(sa.select(r.c.window_id).where(r.c.deployment == target.name))}
            days = sorted(set(conn.execute(sa.select(b.c.start).where(
                mine & (b.c.period == "day") & (b.c.start >= first_day))).scalars()), reverse=True)
            # A past day nothing new arrived for keeps its stored report: its aggregates are not read again.
            days = [d for d in days if (target.name, d) in touched_days or d.strftime("%Y-%m-%d") not in known
                    or d.date() == now.date()] if "daily" in config.windows else []
            rows = conn.execute(sa.select(b.c.revision, b.c.period, b.c.start, b.c.data).where(mine & (
                ((b.c.period == "all") & (b.c.revision == serving)) | ((b.c.period == "hour") & (b.c.start >= since))
                | ((b.c.period == "day") & b.c.start.in_(days))))).all()
        reports = []
        if "all" in config.windows and serving in revisions:
            agg = self._merged([x for x in rows if x.period == "all"], revisions, serving, config)
            window = {"id": "all", "kind": "revision", "start": iso(revisions[serving]["created_at"]), "end": iso(now)}
            reports.append(self._report(target, serving, window, revisions, config, {serving: agg}))
        if "last-24h" in config.windows:
            window = {"id": "last-24h", "kind": "rolling", "start": iso(since), "end": iso(now)}
            reports.append(self._window(target, window, [x for x in rows if x.period == "hour"], revisions, config,
                                        serving))
        for day in days:
            window = {"id": day.strftime("%Y-%m-%d"), "kind": "day", "start": iso(day),
                      "end": iso(day + timedelta(days=1))}
            reports.append(self._window(target, window, [x for x in rows if x.period == "day" and x.start == day],
                                        revisions, config, serving))
        return reports

    def _window(self, target, window, rows, revisions, config, serving) -> dict:
        per_revision = {}
        for revision in sorted({x.revision for x in rows}):
            if revision in revisions:
                per_revision[revision] = self._merged([x for x in rows if x.revision == revision], revisions,
                                                      revision, config)
        main = max(per_revision) if per_revision else serving
        if main not in per_revision and main in revisions:
            per_revision[main] = Aggregate(revisions[main]["profile"], config.reservoir or self.reservoir)
        return self._report(target, main, window, revisions, config, per_revision)

    def _merged(self, rows, revisions, revision, config) -> Aggregate:
        profile = revisions[revision]["profile"]
        agg = Aggregate(profile, config.reservoir or self.reservoir)
        for row in rows:
            agg.merge(Aggregate.from_bytes(row.data, profile))
        return agg

    def _report(self, target: Target, main: int, window: dict, revisions: dict, config: DriftConfig,
                per_revision: dict[int, Aggregate]) -> dict:
        entry = revisions[main]
        notes = []
        if not entry["has_outputs"]:
            notes.append("the model's outputs are not monitored yet: "
                         + (entry["outputs_error"] or "the model server has not profiled them on the training data")
                         + f"; they will be compared with the first {config.min_rows} production rows")
        elif entry["outputs_source"] == "production":
            notes.append(f"the model's outputs are compared with this revision's first {config.min_rows} production "
                         f"rows, not with the training data"
                         + (f" ({entry['outputs_error']})" if entry["outputs_error"] else ""))
        report = build_report(deployment=target.name, revision=main, window=window, profile=entry["profile"],
                              agg=per_revision[main], config=config, notes=notes)
        others = []
        for revision, agg in sorted(per_revision.items()):
            if revision != main and agg.rows:
                other = build_report(deployment=target.name, revision=revision, window=window,
                                     profile=revisions[revision]["profile"], agg=agg, config=config)
                others.append({key: other[key] for key in ("revision", "rows", "status", "dataset_drift",
                                                           "drifted_share", "drifted_features")})
        report["other_revisions"] = others
        return report


def _copy(agg: Aggregate, profile) -> Aggregate:
    fresh = Aggregate(profile, agg.capacity, bounded=False)
    fresh.merge(agg)
    return fresh
