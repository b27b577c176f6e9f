"""`crackloc experiment`: every method × seed on one split manifest, resumable, then aggregated.

EXP/
  experiment.json          what was asked (preset, methods, seeds, manifest, masks, overrides)
  split.csv                the one manifest every run uses (unless --manifest was given)
  teachers/seed<k>/        the CAM teacher of seed k and its pseudo-mask caches, shared by runs
  runs/<method>/seed<k>/   a `crackloc train` run folder (+ localization/ with --masks)
  results.csv, summary.json  per-run metrics; mean ± std per method and paired t-tests

Stage 2 (`crackseg`) starts from the proposed run of its seed (`model.init_from`), so that run goes
first; the training-free floors train nothing (their run folder holds the model file and the
validation threshold). Each kind of map is tiled at its own scale (`methods.localization_settings`).

A run whose metrics.json exists (and localization/metrics.json, with --masks) is skipped; a
run with a config.yaml but no model.pt resumes from its Lightning checkpoints.

Runs are trained one after another. `gpus_per_run` K > 0 trains each run data-parallel on K GPUs
with strategy 'ddp_spawn': every training stage spawns its K workers from this process, so the
shared teachers, localisation and evaluation stay here ('ddp' would re-run `crackloc experiment`
in every process). A run already started keeps the devices saved in its config.yaml.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crackloc.config import (
    EXPERIMENT_BUDGET,
    PRESETS,
    InferenceConfig,
    RunConfig,
    apply_overrides,
    preset,
)
from crackloc.data.manifest import ensure_manifest
from crackloc.data.masks import MaskDataset
from crackloc.errors import CracklocError
from crackloc.evaluation.evaluate import evaluate_run
from crackloc.evaluation.localize_run import evaluate_localization, fixed_partition
from crackloc.experiments.aggregate import write_results
from crackloc.experiments.methods import (
    ALL_METHODS,
    PROPOSED,
    STAGE2,
    STAGE2_TRAIN,
    is_training_free,
    localization_settings,
    method_dir,
    method_model_config,
)
from crackloc.inference.predictor import Predictor
from crackloc.io import write_json
from crackloc.training.fit import per_device_batch
from crackloc.training.pipeline import train_run


@dataclass
class ExperimentSpec:
    """What one `crackloc experiment` call runs."""

    out: Path
    preset: str = "quick"
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    data: str = ""
    manifest: str = ""
    masks: str = ""  # images/ + masks/ folder for localisation against human masks
    max_images: int | None = 20  # images of `masks` scored per run
    loc_scale: float = 6.0  # photo upscaling before tiling (chosen on CrackForest dev images)
    loc_gate: bool = True  # gate each window's map by its crack probability
    loc_line_guide: float = InferenceConfig.line_guide  # predict's line guide on every learned map (floors: 0)
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted RunConfig keys
    gpus_per_run: int = 0  # > 0: each run trains with DDP on this many GPUs (ddp_spawn); 0: one device


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' → [0, 1, 2]."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CracklocError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise CracklocError(f"--seeds must be non-negative integers, got {text!r}")
    return list(dict.fromkeys(seeds))


def run_dir(out: Path, method: str, seed: int) -> Path:
    """EXP/runs/<method>/seed<k>."""
    return Path(out) / "runs" / method_dir(method) / f"seed{seed}"


def method_config(spec: ExperimentSpec, method: str, seed: int, manifest: Path) -> RunConfig:
    """The RunConfig of one run: preset + experiment budget + overrides, the method's model, the seed."""
    cfg = preset(spec.preset, **EXPERIMENT_BUDGET.get(spec.preset, {}))
    cfg = apply_overrides(cfg, {**spec.overrides, "train.seed": seed, "data.manifest": str(manifest),
                                "data.data": spec.data or None, **gpu_overrides(spec.gpus_per_run)})
    cfg.model = method_model_config(cfg.model, method)
    if method == STAGE2:  # trained from the same seed's proposed run: its encoder, and its maps for the labels
        cfg = apply_overrides(cfg, {**STAGE2_TRAIN, "model.init_from": str(run_dir(spec.out, PROPOSED, seed) / "model.pt")})
    return cfg


def gpu_overrides(gpus_per_run: int) -> dict[str, Any]:
    """Config keys that train a run data-parallel on `gpus_per_run` GPUs (none for 0)."""
    if not gpus_per_run:
        return {}
    return {"train.accelerator": "gpu", "train.devices": gpus_per_run, "train.strategy": "ddp_spawn"}


def check_gpus(spec: ExperimentSpec) -> None:
    """Refuse `gpus_per_run` beyond the CUDA GPUs this process can see, or one the batch does not split over."""
    import torch

    if not spec.gpus_per_run:
        return
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec.gpus_per_run > available:
        raise CracklocError(f"--gpus-per-run {spec.gpus_per_run}: this machine has {available} CUDA GPU(s) "
                            "(CUDA_VISIBLE_DEVICES chooses which are seen)")
    cfg = preset(spec.preset, **EXPERIMENT_BUDGET.get(spec.preset, {}))
    per_device_batch(apply_overrides(cfg, {**spec.overrides, **gpu_overrides(spec.gpus_per_run)}).train)


def ensure_split(spec: ExperimentSpec, *, progress: bool) -> Path:
    """The manifest all runs share: --manifest, else EXP/split.csv (made once, split seed 0)."""
    if spec.manifest:
        return Path(spec.manifest).resolve()
    made = spec.out / "split.csv"
    if made.is_file():
        return made.resolve()
    if not spec.data:
        raise CracklocError("give --data DIR (a split is made once into EXP/split.csv) or --manifest CSV")
    cfg = RunConfig()
    cfg.data.data, cfg.train.seed = str(Path(spec.data).resolve()), 0
    ensure_manifest(cfg, spec.out, progress=progress)
    return Path(cfg.data.manifest)


def record_spec(spec: ExperimentSpec, manifest: Path) -> None:
    """Write EXP/experiment.json; refuse to mix presets or overrides within one EXP."""
    path = spec.out / "experiment.json"
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if saved and (saved["preset"], saved["overrides"]) != (spec.preset, spec.overrides):
        raise CracklocError(f"{spec.out} holds a {saved['preset']!r} experiment with overrides "
                            f"{saved['overrides']}; use a new --out for different settings")
    record = {"preset": spec.preset, "overrides": spec.overrides, "manifest": str(manifest),
              "data": spec.data, "masks": spec.masks or saved.get("masks", ""), "max_images": spec.max_images,
              "loc_scale": spec.loc_scale, "loc_gate": spec.loc_gate, "loc_line_guide": spec.loc_line_guide,
              "methods": list(dict.fromkeys(saved.get("methods", []) + spec.methods)),
              "seeds": sorted(set(saved.get("seeds", [])) | set(spec.seeds)),
              "experiment_preset": EXPERIMENT_BUDGET.get(spec.preset, {}), "gpus_per_run": spec.gpus_per_run,
              "inference": dataclasses.asdict(localization_config(spec, image_size=None)),
              "inference_by_method": {**saved.get("inference_by_method", {}), **{
                  m: {"scale": c.scale, "gate": c.gate, "line_guide": c.line_guide} for m in spec.methods
                  for c in [localization_config(spec, image_size=None, method=m)]}}}
    write_json(path, record)


def localization_config(spec: ExperimentSpec, *, image_size: int | None, method: str = PROPOSED) -> InferenceConfig:
    """How the experiment maps human-mask images: the inference defaults, spec's scale, gate and line
    guide (stage 2 and the floors at their own scale: `methods.localization_settings`)."""
    scale, gate = localization_settings(method, scale=spec.loc_scale, gate=spec.loc_gate)
    guide = 0.0 if is_training_free(method) else spec.loc_line_guide  # a floor is its filter as it is
    cfg = InferenceConfig(scale=scale, gate=gate, line_guide=guide)
    return cfg if image_size is None else dataclasses.replace(cfg, tile=image_size)


def localize(run: Path, spec: ExperimentSpec, *, image_size: int, progress: bool, method: str = PROPOSED) -> dict:
    """Score RUN/model.pt's tiled heatmaps against human masks into RUN/localization/.

    The threshold is chosen on images of the fixed dev partition (the one that chose scale,
    gate and AHR cut), and only images outside it are scored: asserted here.
    """
    dev, test = fixed_partition(MaskDataset(spec.masks).stems, max_images=spec.max_images)
    predictor = Predictor(run / "model.pt", localization_config(spec, image_size=image_size, method=method))
    metrics = evaluate_localization(predictor, spec.masks, run / "localization", partition=(dev, test),
                                    n_overlays=4, progress=progress)
    settings_dev, _ = fixed_partition(MaskDataset(spec.masks).stems)
    if set(metrics["scored_test"]) & set(settings_dev):
        raise CracklocError(f"{run}: scored images that chose settings: {sorted(set(metrics['scored_test']) & set(settings_dev))}")
    return metrics


def run_one(spec: ExperimentSpec, method: str, seed: int, manifest: Path, *, progress: bool) -> str:
    """Train, localise and evaluate one method × seed unless done: → 'skipped' | 'done'."""
    run = run_dir(spec.out, method, seed)
    loc_done = not spec.masks or (run / "localization" / "metrics.json").is_file()
    if (run / "metrics.json").is_file() and loc_done:
        return "skipped"
    cfg = method_config(spec, method, seed, manifest)
    if method == STAGE2 and not (run / "model.pt").is_file() and not Path(cfg.model.init_from).is_file():
        raise CracklocError(f"{method} seed {seed} starts from {cfg.model.init_from}: run {PROPOSED} first "
                            f"(--methods {PROPOSED},{STAGE2})")
    if not (run / "model.pt").is_file():
        train_run(cfg, run, resume=(run / "config.yaml").is_file(), progress=progress,
                  teacher_dir=spec.out / "teachers" / f"seed{seed}")
    if not loc_done:
        localize(run, spec, image_size=cfg.data.image_size, progress=progress, method=method)
    if not (run / "metrics.json").is_file():  # written last: the run's completion marker
        evaluate_run(run, progress=progress)
    return "done"


def run_experiment(spec: ExperimentSpec, *, progress: bool = True,
                   log: Callable[[str], None] = print) -> dict:
    """Run every method × seed (seed by seed, so each seed's teacher is trained once), then aggregate.

    Returns the summary written to EXP/summary.json.
    """
    if spec.preset not in PRESETS:
        raise CracklocError(f"unknown preset {spec.preset!r} (choose {', '.join(PRESETS)})")
    check_gpus(spec)
    spec.out = Path(spec.out).resolve()  # stage 2's init_from is saved in its run config: no relative paths
    spec.out.mkdir(parents=True, exist_ok=True)
    manifest = ensure_split(spec, progress=progress)
    record_spec(spec, manifest)
    total, k = len(spec.methods) * len(spec.seeds), 0
    for seed in spec.seeds:
        for method in spec.methods:
            k += 1
            t0 = time.time()
            status = run_one(spec, method, seed, manifest, progress=progress)
            log(f"[{k}/{total}] {method} seed {seed}: {status} ({time.time() - t0:.0f} s)")
    summary = write_results(spec.out)
    log(f"results: {spec.out / 'results.csv'}, summary: {spec.out / 'summary.json'}")
    return summary
