"""Collect run metrics into EXP/results.csv; mean ± std per method and paired t-tests in summary.json.

Standard deviations are sample standard deviations (ddof = 1) over seeds, as "mean ± std over
5 runs" reads. The paired t-test compares the proposed model with each other method on the
seeds both have finished (scipy.stats.ttest_rel, two-sided).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Any

from crackloc.experiments.methods import ARCHITECTURES, PROPOSED, method_from_dir
from crackloc.io import atomic_write, write_json

CLASSIFICATION = ("auroc", "accuracy", "precision", "recall", "f1")  # Table I, at threshold 0.5
LOCALIZATION = ("iou_pseudo", "pxap", "loc_f1", "loc_iou", "loc_ods_f1", "loc_ois_f1", "loc_ods_f1_0px",
                "loc_ois_f1_0px")
METRICS = (*CLASSIFICATION, *(f"{m}_val_t" for m in CLASSIFICATION[1:]), *LOCALIZATION)


def _finite(x: Any) -> float | None:
    """float(x), or None for None/NaN/±inf (JSON and CSV friendly)."""
    if x is None or x == "":
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def run_row(method: str, seed: int, metrics: dict, loc: dict | None = None) -> dict[str, Any]:
    """One results.csv row from a run's metrics.json (and localization/metrics.json)."""
    at05, at_val = metrics["at_0.5"], metrics["at_val_threshold"]
    row: dict[str, Any] = {"method": method, "seed": seed, **{m: at05[m] for m in CLASSIFICATION}}
    row.update({f"{m}_val_t": at_val[m] for m in CLASSIFICATION[1:]})
    row["val_threshold"] = at_val["threshold"]
    row["iou_pseudo"] = (metrics.get("pseudo_iou") or {}).get("iou_vs_teacher_pseudo_mean")
    loc = loc or {}
    for key, src in (("pxap", "pxap"), ("loc_f1", "f1"), ("loc_iou", "iou"), ("loc_ods_f1", "ods_f1"),
                     ("loc_ois_f1", "ois_f1"), ("loc_ods_f1_0px", "ods_f1_0px"), ("loc_ois_f1_0px", "ois_f1_0px")):
        row[key] = loc.get(src)
    row.update({"loc_threshold": loc.get("threshold"), "n_test": metrics["n_test"],
                "images_per_s": metrics.get("inference_images_per_s"),
                "backbone": ARCHITECTURES.get(metrics.get("model", ""), metrics.get("backbone")),
                "pretrained_source": metrics.get("pretrained_source")})
    return row


def collect_rows(exp: str | Path) -> list[dict[str, Any]]:
    """Rows of every finished run under EXP/runs (sorted by method, then seed)."""
    rows = []
    for path in sorted(Path(exp).glob("runs/*/seed*/metrics.json")):
        run = path.parent
        loc_path = run / "localization" / "metrics.json"
        loc = json.loads(loc_path.read_text(encoding="utf-8")) if loc_path.is_file() else None
        metrics = json.loads(path.read_text(encoding="utf-8"))
        summary_path = run / "train_summary.json"
        train = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
        row = run_row(method_from_dir(run.parent.name), int(run.name[len("seed"):]), metrics, loc)
        row["train_seconds"] = train.get("train_seconds")
        rows.append(row)
    return sorted(rows, key=lambda r: (r["method"], r["seed"]))


def mean_std(values: list[float | None]) -> dict[str, float | int | None]:
    """{'mean', 'std' (ddof 1; None below 2 values), 'n'} of the finite values."""
    xs = [v for v in map(_finite, values) if v is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": mean, "std": std, "n": len(xs)}


def summarize(rows: list[dict[str, Any]], *, metrics: tuple[str, ...] = METRICS) -> dict[str, dict]:
    """{method: {metric: mean_std}} over seeds."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    return {m: {k: mean_std([r.get(k) for r in rows if r["method"] == m]) for k in metrics} for m in methods}


def paired_ttest(a: list[float], b: list[float]) -> dict[str, float | int | None]:
    """Two-sided paired t-test of a − b: {'t', 'p', 'n', 'mean_diff'}.

    t and p are None when undefined: fewer than 2 pairs, or differences without variance.
    """
    from scipy.stats import ttest_rel

    n = len(a)
    diff = sum(x - y for x, y in zip(a, b, strict=True)) / n if n else None
    if n < 2:
        return {"t": None, "p": None, "n": n, "mean_diff": diff}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero-variance differences
        res = ttest_rel(a, b)
    t = _finite(res.statistic)
    return {"t": t, "p": _finite(res.pvalue) if t is not None else None, "n": n, "mean_diff": diff}


def paired_tests(rows: list[dict[str, Any]], *, proposed: str = PROPOSED,
                 metrics: tuple[str, ...] = METRICS) -> dict[str, dict]:
    """{other method: {metric: paired_ttest(proposed, other)}} on the seeds both have."""
    by = {(r["method"], r["seed"]): r for r in rows}
    out: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        if method == proposed:
            continue
        out[method] = {}
        for metric in metrics:
            seeds = sorted(s for (m, s) in by if m == method and (proposed, s) in by
                           and _finite(by[(m, s)].get(metric)) is not None
                           and _finite(by[(proposed, s)].get(metric)) is not None)
            a = [float(by[(proposed, s)][metric]) for s in seeds]
            b = [float(by[(method, s)][metric]) for s in seeds]
            out[method][metric] = {**paired_ttest(a, b), "seeds": seeds}
    return out


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Atomically write dict rows as CSV (columns: union of keys in first-seen order)."""
    fields = list(dict.fromkeys(k for r in rows for k in r))

    def write(f) -> None:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return atomic_write(path, write, binary=False)


def write_results(exp: str | Path) -> dict[str, Any]:
    """Write EXP/results.csv and EXP/summary.json from the finished runs; returns the summary."""
    exp = Path(exp)
    rows = collect_rows(exp)
    write_csv(exp / "results.csv", rows)
    summary = {"proposed": PROPOSED, "n_runs": len(rows), "std": "sample (ddof=1) over seeds",
               "methods": summarize(rows), "ttests_vs_proposed": paired_tests(rows)}
    write_json(exp / "summary.json", summary)
    return summary
