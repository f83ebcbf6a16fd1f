"""The drift report of one window (design 2.6): the reference profile against a window aggregate.

Per monitored column: the test the method picks (or the config's override), its score against the
threshold, missing rates, the extra checks (missing-rate change, out-of-range share, unseen-category
share, each with its own threshold; they are shown, not counted in the dataset verdict, so the verdict
stays the method's own), and both sides' statistics and histograms on the same bins. Model outputs
are columns like the features, reported under `outputs` (and the first one as `prediction`).

A window with fewer production rows than `min_rows` says "not enough data" and is never drifted.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from modelrun.drift import methods, stattests
from modelrun.drift.aggregate import Aggregate, ColumnAggregate
from modelrun.drift.config import DriftConfig
from modelrun.drift.profile import OUTPUT_PREFIX, ColumnProfile, Profile

SCHEMA = 1
TOP_CATEGORIES = 20  # categories drawn per column (the reference's most frequent, then unseen ones)


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def build_report(*, deployment: str, revision: int | None, window: dict, profile: Profile, agg: Aggregate,
                 config: DriftConfig, notes: list[str] | None = None) -> dict:
    enough = agg.rows >= config.min_rows
    features, outputs = [], []
    for ref in profile.columns:
        override = config.override(_plain(ref.name))
        if not override.monitor:
            continue
        entry = column_entry(ref, agg.columns[ref.name], agg, config, enough)
        (outputs if ref.name.startswith(OUTPUT_PREFIX) else features).append(entry)
    tested = [e for e in features + outputs if e["score"] is not None]
    drifted = [e["name"] for e in tested if e["drifted"]]
    share = len(drifted) / len(tested) if tested else 0.0
    threshold = config.share if config.share is not None else methods.DATASET_SHARE[config.method]
    if config.share is not None:
        dataset = bool(tested) and share >= config.share
    else:
        dataset = methods.dataset_drift(config.method, len(drifted), len(tested))
    dataset = dataset and enough
    notes = list(notes or [])
    if not enough:
        notes.append(f"not enough data: {agg.rows} production rows, at least {config.min_rows} are needed "
                     f"before this window is judged")
    missing = [e["name"] for e in features if e["production"]["count"] == 0 and e["missing"]["production"] == 1.0]
    if missing and agg.rows:
        notes.append(f"no production values for: {', '.join(missing)} (absent or always null in the logged requests)")
    features.sort(key=_severity)
    return {
        "schema": SCHEMA, "deployment": deployment, "revision": revision, "window": window,
        "rows": {"reference": profile.rows, "production": agg.rows},
        "method": config.method, "min_rows": config.min_rows, "enough_data": enough,
        "status": ("drift" if dataset else "no_drift") if enough else "not_enough_data",
        "dataset_drift": dataset, "drifted_share": share, "drift_share_threshold": threshold,
        "drifted_features": drifted if enough else [],
        "generated_at": iso(datetime.now(UTC)),
        "features": features, "outputs": outputs, "prediction": outputs[0] if outputs else None,
        "notes": notes,
    }


def _plain(name: str) -> str:
    return name[len(OUTPUT_PREFIX):] if name.startswith(OUTPUT_PREFIX) else name


def _severity(entry: dict):
    """Drifted first, then by how far the score is past (or short of) its threshold."""
    score, threshold = entry["score"], entry["threshold"]
    if score is None:
        return (2, 0.0)
    test = stattests.get_test(entry["test"])
    if test.score_is == "p_value":
        closeness = -math.log10(max(score, 1e-300)) + math.log10(threshold)
    else:
        closeness = (score - threshold) / threshold if threshold else score
    return (0 if entry["drifted"] else 1, -closeness)


def reference_column(ref: ColumnProfile) -> stattests.Column:
    if ref.kind == "numerical":
        return stattests.Column(kind="numerical", n=ref.n, values=ref.sample, counts=ref.counts,
                                minimum=ref.minimum, maximum=ref.maximum)
    return stattests.Column(kind="categorical", n=ref.n, counts=ref.counts)


def column_entry(ref: ColumnProfile, agg: ColumnAggregate, window: Aggregate, config: DriftConfig, enough: bool) -> dict:
    name = _plain(ref.name)
    entry = {"name": name, "type": ref.kind, "test": None, "test_title": None, "score": None,
             "threshold": None, "drifted": False,
             "missing": {"reference": _share(ref.missing, ref.total), "production": _share(agg.missing, agg.total)},
             "checks": {}, "reference": _reference_stats(ref), "production": _production_stats(ref, agg)}
    entry["checks"]["missing_rate"] = _check(abs(entry["missing"]["production"] - entry["missing"]["reference"])
                                             if agg.total else None, config.check_threshold("missing_rate"))
    if ref.kind == "numerical":
        entry["checks"]["out_of_range"] = _check(_share(agg.below + agg.above, agg.n) if agg.n else None,
                                                 config.check_threshold("out_of_range"))
    else:
        entry["checks"]["unseen"] = _check(_share(agg.unseen, agg.n) if agg.n else None,
                                           config.check_threshold("unseen"))
    if agg.invalid:
        entry["invalid"] = {"production": agg.invalid}
    if ref.kind == "text":
        entry["note"] = "free text (most values distinct): not tested"
        return entry
    current = window.column(ref.name)
    reference = reference_column(ref)
    if reference.n == 0 or current.n == 0:
        entry["note"] = "no values in the " + ("reference" if reference.n == 0 else "production window")
        return entry
    override = config.override(name)
    test = stattests.get_test(override.test or methods.choose_test(
        config.method, ref.kind, reference.n, _distinct(reference, current)))
    threshold = override.threshold if override.threshold is not None else test.threshold
    score = float(test.fn(reference, current))
    entry.update(test=test.name, test_title=test.title, score=score if math.isfinite(score) else None,
                 threshold=threshold, drifted=bool(enough and math.isfinite(score) and test.drifted(score, threshold)))
    if not math.isfinite(score):
        entry["note"] = f"the {test.title} is undefined for these values"
    return entry


def _distinct(ref: stattests.Column, cur: stattests.Column) -> int | None:
    if ref.counts is None or cur.counts is None:
        return None
    return len(set(ref.counts) | set(cur.counts))


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _check(score: float | None, threshold: float) -> dict:
    return {"score": score, "threshold": threshold, "flagged": bool(score is not None and score > threshold)}


def _reference_stats(ref: ColumnProfile) -> dict:
    if ref.kind == "numerical":
        return {"count": ref.n, "mean": ref.mean, "std": ref.std, "min": ref.minimum, "max": ref.maximum,
                "median": ref.median, "histogram": {"edges": ref.edges, "counts": ref.hist}}
    categories = _categories(ref, None)
    return {"count": ref.n, "distinct": ref.distinct,
            "histogram": {"categories": categories, "counts": [(ref.counts or {}).get(c, 0) for c in categories],
                          "other": ref.n - sum((ref.counts or {}).get(c, 0) for c in categories)}}


def _production_stats(ref: ColumnProfile, agg: ColumnAggregate) -> dict:
    if ref.kind == "numerical":
        std = math.sqrt(agg.m2 / agg.n) if agg.n else None
        return {"count": agg.n, "mean": agg.mean if agg.n else None, "std": std, "min": agg.minimum,
                "max": agg.maximum, "histogram": {"edges": ref.edges, "counts": agg.hist, "below": agg.below,
                                                  "above": agg.above}}
    categories = _categories(ref, agg)
    counts = agg.counts or {}
    return {"count": agg.n, "distinct": len(counts),
            "histogram": {"categories": categories, "counts": [counts.get(c, 0) for c in categories],
                          "other": agg.n - sum(counts.get(c, 0) for c in categories)}}


def _categories(ref: ColumnProfile, agg: ColumnAggregate | None) -> list[str]:
    """The reference's most frequent categories, then (if any) the production's most frequent unseen ones.
    Both sides call this with the same arguments' reference part, so the production list extends the
    reference's."""
    known = sorted((ref.counts or {}).items(), key=lambda item: (-item[1], item[0]))[:TOP_CATEGORIES]
    names = [k for k, _ in known]
    if agg is not None and agg.counts:
        unseen = sorted(((k, c) for k, c in agg.counts.items() if k not in (ref.counts or {})),
                        key=lambda item: (-item[1], item[0]))[:10]
        names += [k for k, _ in unseen]
    return names
