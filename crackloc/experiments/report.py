"""`crackloc report EXP`: Tables I and II, the IoU tables and figures, ours beside the paper's.

Writes EXP/report/{report.md, table1.csv, table2.csv, iou.csv, human_masks.csv, curves.png,
curves_all.png, qualitative.png[, qualitative_masks.png]} from EXP/results.csv (remade from
the run folders) and EXP/experiment.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crackloc.errors import CracklocError
from crackloc.experiments.aggregate import CLASSIFICATION, collect_rows, write_csv, write_results
from crackloc.experiments.methods import (
    ABLATION_USES_PSEUDO_MASKS,
    FLOORS,
    PROPOSED,
    STAGE2,
    localization_settings,
    table_source,
)
from crackloc.io import write_text

TABLE1: dict[str, tuple[str, tuple[float, ...]]] = {  # paper Table I: mean, std per metric
    "cam_vgg16": ("CAM [9] (VGG-16)", (0.9120, 0.0041, 0.9105, 0.0038, 0.8972, 0.0052, 0.9011, 0.0045, 0.8991, 0.0043)),
    "resnet18_cam": ("ResNet-18+CAM [10]", (0.9270, 0.0035, 0.9253, 0.0032, 0.9121, 0.0048, 0.9155, 0.0040, 0.9138, 0.0039)),
    "wsol_crack": ("WSOL-Crack [12] (stand-in: Grad-CAM++)",
                   (0.9330, 0.0031, 0.9312, 0.0030, 0.9203, 0.0042, 0.9241, 0.0037, 0.9222, 0.0035)),
    "psol": ("PSOL [20]", (0.9512, 0.0024, 0.9498, 0.0026, 0.9415, 0.0035, 0.9453, 0.0031, 0.9434, 0.0029)),
    "ts_cam": ("TS-CAM [21] (DeiT-Tiny)", (0.9654, 0.0019, 0.9631, 0.0021, 0.9572, 0.0028, 0.9610, 0.0025, 0.9591, 0.0024)),
    "crackloc": ("Proposed", (0.9882, 0.0015, 0.9847, 0.0012, 0.9835, 0.0011, 0.9871, 0.0013, 0.9853, 0.0010)),
}
TABLE2: list[tuple[str, str, float, float]] = [  # method, paper row label, paper AUROC mean, std
    ("ablation:single_scale", "Baseline (single-scale ResNet-18)", 0.9120, 0.0041),
    ("ablation:msrfe_concat", "Baseline + MS-RFE (concat)", 0.9640, 0.0020),
    ("ablation:msrfe_attention", "Baseline + MS-RFE (attention fusion)", 0.9705, 0.0018),
    ("ablation:ahr", "Baseline + AHR", 0.9710, 0.0017),
    ("ablation:full_concat", "Full model (MS-RFE concat + AHR)", 0.9825, 0.0016),
    ("ablation:full_attention", "Full model (attention fusion + AHR)", 0.9882, 0.0015),
]
PAPER_IOU = {"crackloc": (0.82, 0.05), "resnet18_cam": (0.65, 0.08), "wsol_crack": (0.68, 0.07),
             "psol": (0.73, 0.06), "ts_cam": (0.77, 0.05)}


def fmt(stat: dict | None, digits: int = 4) -> str:
    """'0.9123 ± 0.0040 (n=3)' from a mean_std dict; '—' when missing."""
    if not stat or stat.get("mean") is None:
        return "—"
    std = f" ± {stat['std']:.{digits}f}" if stat.get("std") is not None else ""
    return f"{stat['mean']:.{digits}f}{std} (n={stat['n']})"


def fmt_p(test: dict | None) -> str:
    """p-value of a paired t-test, or '—'."""
    return "—" if not test or test.get("p") is None else f"{test['p']:.3g}"


def _stat(summary: dict, method: str, metric: str) -> dict | None:
    return summary["methods"].get(method, {}).get(metric)


def _test(summary: dict, method: str, metric: str) -> dict | None:
    return summary["ttests_vs_proposed"].get(method, {}).get(metric)


def table1(summary: dict) -> tuple[str, list[dict[str, Any]]]:
    """Table I (threshold 0.5) as Markdown and CSV rows, with the paper's numbers and p vs proposed."""
    head = "| method | " + " | ".join(f"{m} (ours) | {m} (paper)" for m in CLASSIFICATION) + " | p (AUROC) |"
    lines = [head, "|" + "---|" * (2 * len(CLASSIFICATION) + 2)]
    rows = []
    for method, (label, paper) in TABLE1.items():
        cells = []
        for i, metric in enumerate(CLASSIFICATION):
            stat, test = _stat(summary, method, metric), _test(summary, method, metric)
            cells += [fmt(stat), f"{paper[2 * i]:.4f} ± {paper[2 * i + 1]:.4f}"]
            rows.append({"method": method, "label": label, "metric": metric,
                         **{f"ours_{k}": (stat or {}).get(k) for k in ("mean", "std", "n")},
                         "paper_mean": paper[2 * i], "paper_std": paper[2 * i + 1],
                         "p_vs_proposed": (test or {}).get("p")})
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {fmt_p(_test(summary, method, 'auroc'))} |")
    return "\n".join(lines), rows


def table2(summary: dict) -> tuple[str, list[dict[str, Any]]]:
    """Table II (ablation AUROC); the full-attention row is the proposed model's runs unless run apart."""
    lines = ["| configuration | AUROC (ours) | AUROC (paper) | p vs proposed |", "|---|---|---|---|"]
    rows = []
    for method, label, mean, std in TABLE2:
        source = table_source(method, set(summary["methods"]))
        stat, test = _stat(summary, source, "auroc"), _test(summary, source, "auroc")
        lines.append(f"| {label} | {fmt(stat)} | {mean:.4f} ± {std:.4f} | {fmt_p(test)} |")
        rows.append({"method": source, "label": label, **{f"ours_{k}": (stat or {}).get(k) for k in ("mean", "std", "n")},
                     "paper_mean": mean, "paper_std": std, "p_vs_proposed": (test or {}).get("p")})
    return "\n".join(lines), rows


def iou_table(summary: dict) -> tuple[str, list[dict[str, Any]]]:
    """The paper's IoU against the teacher's pseudo masks (circular), ours beside the paper's."""
    lines = ["| method | IoU vs teacher pseudo masks (ours) | paper | p vs proposed |", "|---|---|---|---|"]
    rows = []
    for method, (label, _) in TABLE1.items():
        stat, paper = _stat(summary, method, "iou_pseudo"), PAPER_IOU.get(method)
        lines.append(f"| {label} | {fmt(stat, 3)} | {f'{paper[0]:.2f} ± {paper[1]:.2f}' if paper else '—'} "
                     f"| {fmt_p(_test(summary, method, 'iou_pseudo'))} |")
        rows.append({"method": method, "label": label, **{f"ours_{k}": (stat or {}).get(k) for k in ("mean", "std", "n")},
                     "paper_mean": paper[0] if paper else None, "paper_std": paper[1] if paper else None})
    return "\n".join(lines), rows


def human_mask_table(summary: dict) -> tuple[str, list[dict[str, Any]]] | None:
    """PxAP / F1 / IoU against human masks per method, or None when no run was scored."""
    keys = ("pxap", "loc_f1", "loc_iou", "loc_ods_f1", "loc_ois_f1", "loc_ods_f1_0px", "loc_ois_f1_0px")
    order = [*TABLE1, *(m for m, *_ in TABLE2), STAGE2, *FLOORS]
    methods = sorted((m for m in summary["methods"] if (_stat(summary, m, "pxap") or {}).get("n")),
                     key=lambda m: (order.index(m) if m in order else len(order), m))
    if not methods:
        return None
    lines = ["| method | PxAP | F1 (dev threshold) | IoU (dev threshold) | ODS F1 | OIS F1 | ODS F1 (0 px) | "
             "OIS F1 (0 px) | p (PxAP) |", "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(fmt(_stat(summary, method, k), 3) for k in keys)
                     + f" | {fmt_p(_test(summary, method, 'pxap'))} |")
        rows.append({"method": method, **{f"{k}_{s}": (_stat(summary, method, k) or {}).get(s)
                                          for k in keys for s in ("mean", "std", "n")}})
    return "\n".join(lines), rows


def _header(exp: Path, spec: dict, results: list[dict]) -> str:
    """Report preamble: what was run, with what data and weights."""
    sources = sorted({str(r.get("pretrained_source")) for r in results})
    seeds = sorted({r["seed"] for r in results})
    label = ("QUICK preset (reduced images and epochs on a 2-core CPU) — not comparable in scale to the paper"
             if spec.get("preset") == "quick" else f"preset {spec.get('preset')!r}")
    return "\n".join([
        f"# crackloc experiment report: `{exp}`", "",
        f"- {label}; experiment settings {spec.get('experiment_preset', {})}, overrides {spec.get('overrides', {})}",
        f"- split manifest `{spec.get('manifest')}` shared by every run; seeds {seeds}; {len(results)} finished runs",
        f"- pretrained weights of the runs: {', '.join(sources)} ('none' = random init, unlike the paper's ImageNet start)",
        "- mean ± sample std over seeds; p: two-sided paired t-test of the proposed model against that method "
        "on the same seeds (scipy.stats.ttest_rel)",
        f"- the ablation rows are trained {'with' if ABLATION_USES_PSEUDO_MASKS else 'without'} the proposed "
        "model's L1 term against the teacher's pseudo masks (`uses_pseudo_masks` in each run's config.yaml)",
    ])


def _tiling(spec: dict) -> str:
    """How the human-mask images were tiled: the stage-1 scale and gate, and stage 2's and the floors'."""
    base = {"scale": spec.get("loc_scale", 1.0), "gate": spec.get("loc_gate", False)}

    recorded = spec.get("inference_by_method", {})  # what the runs used (older folders: today's rule)

    def said(method: str) -> str:
        scale, gate = (recorded[method]["scale"], recorded[method]["gate"]) if method in recorded else \
            localization_settings(method, **base)
        guide = float(recorded.get(method, {}).get("line_guide", 0.0))  # older folders: no guide
        return f"scale {float(scale)}, gate {'on' if gate else 'off'}" + (f", line guide {guide}" if guide else "")

    methods = spec.get("methods", [])
    floor = next((f for f in FLOORS if f in methods), None)
    extra = [f"{name} at {said(m)}" for name, m in (("stage 2", STAGE2), ("the floors", floor)) if m in methods]
    return f"tiled at {said(PROPOSED)}" + (f" ({'; '.join(extra)})" if extra else "")


def build_report(exp: str | Path, *, figures: bool = True, n_images: int = 4) -> Path:
    """Write EXP/report/report.md, the tables as CSV and the figures; returns report.md's path."""
    exp = Path(exp)
    if not (exp / "runs").is_dir():
        raise CracklocError(f"{exp}: not an experiment folder (no runs/; make one with `crackloc experiment`)")
    summary = write_results(exp)
    results = collect_rows(exp)
    spec_path = exp / "experiment.json"
    spec = json.loads(spec_path.read_text(encoding="utf-8")) if spec_path.is_file() else {}
    out = exp / "report"
    parts = [_header(exp, spec, results)]
    sections = [("Table I: classification on the test split (threshold 0.5)", "table1", table1(summary)),
                ("Table II: ablation (test AUROC)", "table2", table2(summary)),
                ("IoU against the teacher's pseudo masks (the paper's §IV-G; circular: it rewards agreeing "
                 "with the teacher, whose CAM made the proposed model's training targets)", "iou", iou_table(summary))]
    human = human_mask_table(summary)
    if human:
        sections.append((f"Localisation against human masks (`{spec.get('masks')}`, {spec.get('max_images')} "
                         f"images per run; {_tiling(spec)}; F1/IoU at the threshold chosen on "
                         "a dev part of those images, 2 px tolerance)", "human_masks", human))
    for title, name, (markdown, rows) in sections:
        parts += ["", f"## {title}", "", markdown]
        write_csv(out / f"{name}.csv", rows)
    if figures:
        from crackloc.experiments.figures import make_figures

        parts += ["", "## Figures", ""]
        parts += [f"![{p.stem}]({p.name})" for p in make_figures(exp, out, spec, n_images=n_images)]
    return write_text(out / "report.md", "\n".join(parts) + "\n")

