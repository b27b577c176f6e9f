"""Training-side subcommands: split, train, evaluate."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from crackloc.cli.registry import checked, command, report_failures
from crackloc.config import PRESETS, ModelConfig, RunConfig, TrainConfig, choices_of
from crackloc.errors import CracklocError


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (override the preset)")
    g.add_argument("--model", dest="model.name", help="registry name (default: crackloc, the proposed model)")
    g.add_argument("--backbone", dest="model.backbone", choices=choices_of(ModelConfig, "backbone"),
                   help="resnet18 (paper) or lite0 (EfficientNet-Lite0, ImageNet weights available offline)")
    g.add_argument("--pretrained", help="ImageNet weights: 'auto' (torch hub cache), 'none', or a file path")
    g.add_argument("--fusion", dest="model.fusion", choices=choices_of(ModelConfig, "fusion"))
    g.add_argument("--no-ahr", dest="model.ahr", action="store_const", const=False, help="disable AHR")
    g.add_argument("--heatmap-norm", dest="model.heatmap_norm", choices=choices_of(ModelConfig, "heatmap_norm"),
                   help="max: each map's peak is 1 (paper); sigmoid: absolute, a crack-free image can stay dark")
    g.add_argument("--l1-map", dest="model.l1_map", choices=choices_of(ModelConfig, "l1_map"),
                   help="map the L1 term sees: refined (after AHR's cut, paper) or uncut (every cell learns)")
    g.add_argument("--pseudo-target", dest="train.pseudo_target", choices=choices_of(TrainConfig, "pseudo_target"),
                   help="teacher target: binary (CAM cut at its 95th percentile, paper) or soft (normalised CAM)")
    g.add_argument("--init-from", dest="model.init_from",
                   help="stage 2 (--model crackseg): the stage-1 model file whose maps give the pseudo-label "
                        "regions and whose backbone and classifier start the encoder; or a stage-2 model file: "
                        "one self-training round on its own confident pixels, starting from all its weights")


@command("split", "group duplicates and write a leak-free 70/15/15 split manifest (CSV)")
def _split_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="folder with Positive/ and Negative/ sub-folders")
    p.add_argument("--positive-dir", help="folder of crack images (instead of --data)")
    p.add_argument("--negative-dir", help="folder of crack-free images (instead of --data)")
    p.add_argument("--out", required=True, help="manifest CSV to write (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="overwrite --out (and its .stats.json) if it exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-distance", type=int, default=4,
                   help="perceptual-hash Hamming distance that counts as a near duplicate (default 4)")
    p.set_defaults(func=_run_split)


def _run_split(a: argparse.Namespace) -> int:
    from crackloc.data.folders import scan_labelled
    from crackloc.data.split import check_manifest, check_split_parts, make_manifest, write_manifest
    from crackloc.io import write_json

    if Path(a.out).exists() and not a.force:
        raise CracklocError(f"{a.out} already exists: pass --force to overwrite it, or choose another --out")
    root, items = scan_labelled(a.data, positive_dir=a.positive_dir, negative_dir=a.negative_dir)
    rows, stats = make_manifest(root, items, seed=a.seed, max_distance=a.max_distance)
    check_split_parts(rows, stats, where=a.out)
    stats["check"] = check_manifest(rows, max_distance=a.max_distance)
    out = write_manifest(a.out, rows, root=root)
    stats_path = write_json(Path(a.out).with_suffix(".stats.json"), stats)
    print(f"wrote {out}: {stats['images']} images in {stats['groups']} groups "
          f"({stats['exact_duplicate_files_merged']} exact duplicates merged, "
          f"{stats['groups_merged_by_near_duplicates']} merges by near duplicates); "
          f"check passed: 0 groups across splits")
    failed = [(f["path"], f["reason"]) for f in stats["failed"]]
    return report_failures(failed, noun="image", listed_in=f"{stats_path}; left out of the manifest")


@command("train", "train the CAM teacher, make pseudo masks, train the student, evaluate on test")
def _train_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="folder with Positive/ and Negative/ (a split is made unless --manifest)")
    p.add_argument("--manifest", help="split manifest from `crackloc split` (reused as is)")
    p.add_argument("--preset", choices=list(PRESETS),
                   help="quick (default): ~15 min on 2 CPU cores; paper: as published; tiny: smoke tests")
    p.add_argument("--config", help="YAML RunConfig to start from instead of a preset (not with --preset)")
    p.add_argument("--out", required=True, help="run folder to create (RUN)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--seed", dest="train.seed", type=checked("seed", "--seed", int))
    p.add_argument("--epochs", dest="train.epochs", type=checked("epochs", "--epochs", int))
    p.add_argument("--teacher-epochs", dest="train.teacher_epochs", type=checked("teacher_epochs", "--teacher-epochs", int))
    p.add_argument("--batch-size", dest="train.batch_size", type=checked("batch_size", "--batch-size", int))
    p.add_argument("--lr", dest="train.lr", type=checked("lr", "--lr"))
    p.add_argument("--lr-schedule", dest="train.lr_schedule", choices=choices_of(TrainConfig, "lr_schedule"),
                   help="constant (paper) or cosine (decays to 0 over --epochs, step by step)")
    p.add_argument("--zoom-out", dest="train.zoom_out", type=checked("zoom_out", "--zoom-out"),
                   help="stage 2: shrink half the batches by a random factor in [this, 1] (mirrored back to the "
                        "patch size) so thinner cracks are seen too; 1 (default): off")
    p.add_argument("--mosaic", dest="train.mosaic", type=checked("mosaic", "--mosaic"),
                   help="stage 2: share of batches where each patch becomes a k x k mosaic of shrunk patches "
                        "(k from 2 to --mosaic-max-grid), so cracks are also seen 1/k as wide; 0 (default): off")
    p.add_argument("--mosaic-max-grid", dest="train.mosaic_max_grid",
                   type=checked("mosaic_max_grid", "--mosaic-max-grid", int),
                   help="largest mosaic grid (default 4: cracks down to a quarter of their width)")
    p.add_argument("--step-negatives", dest="train.step_negatives", type=checked("step_negatives", "--step-negatives"),
                   help="stage 2: share of crack-free patches darkened on one side of a random straight edge "
                        "(a joint or shadow edge is not a crack); 0 (default): off")
    p.add_argument("--confusers", dest="train.confusers", type=checked("confusers", "--confusers"),
                   help="stage 2: share of crack-free patches that get a random crack look-alike (formwork seam, "
                        "joint, step, shadow edge, stain, bug holes, spall; crackloc.data.confusers), labelled "
                        "background; 0 (default): off")
    p.add_argument("--confusers-on-cracks", dest="train.confusers_on_cracks", action="store_true", default=None,
                   help="with --confusers: draw them on crack patches too, their pixels labelled background where "
                        "they are not crack (the model must tell a seam from the crack beside it)")
    p.add_argument("--max-train", dest="data.max_train", type=checked("max_train", "--max-train", int),
                   help="cap on training images")
    p.add_argument("--precision", dest="train.precision", choices=choices_of(TrainConfig, "precision"),
                   help="auto (default): bf16 autocast where the device runs bf16 natively, else fp32 (the one "
                        "that ran is in train_summary.json); bf16 or 32 force one")
    p.add_argument("--select-by", dest="train.select_by", choices=choices_of(TrainConfig, "select_by"),
                   help="which epoch is kept: best val AUROC (paper; saturates at 1.0 on Özgenel), lowest "
                        "val loss, or the last (stage 2)")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation at the end")
    g = p.add_argument_group("several devices (data-parallel DDP; docs/scale.md)")
    g.add_argument("--devices", dest="train.devices", type=checked("devices", "--devices", int),
                   help="devices (processes) per node (default 1); --batch-size is the global batch, split "
                        "evenly over devices x nodes")
    g.add_argument("--num-nodes", dest="train.num_nodes", type=checked("num_nodes", "--num-nodes", int),
                   help="machines (default 1); start the same command on each (torchrun or SLURM srun)")
    g.add_argument("--strategy", dest="train.strategy", choices=choices_of(TrainConfig, "strategy"),
                   help="ddp: every process runs the whole command, rank 0 writes the run folder; "
                        "ddp_spawn: each training stage spawns its workers; auto (default): one device "
                        "trains alone, several use Lightning's choice (ddp)")
    _add_model_options(p)
    p.set_defaults(func=_run_train)


def _overrides(a: argparse.Namespace) -> dict:
    """Dotted config overrides from the flags; backbone and weights apply to teacher and student
    alike (the paper's teacher has "the same backbone")."""
    over = {k: v for k, v in vars(a).items() if "." in k}
    if getattr(a, "pretrained", None):
        over["model.pretrained"] = over["teacher.pretrained"] = a.pretrained
    if over.get("model.backbone"):
        over["teacher.backbone"] = over["model.backbone"]
    return over


def _refuse_empty_config(path: str) -> None:
    """An empty (or comments-only) config file would silently mean the 30-epoch paper defaults."""
    import yaml

    file = Path(path)
    try:
        empty = file.is_file() and yaml.safe_load(file.read_text(encoding="utf-8")) is None
    except (yaml.YAMLError, UnicodeDecodeError):
        return  # load_config names the problem
    if empty:
        raise CracklocError(f"{file}: empty config file; give a RunConfig YAML (e.g. a run's config.yaml), "
                            "or --preset instead of --config")


def requested_config(a: argparse.Namespace) -> tuple[RunConfig, dict[str, Any]]:
    """The config the flags ask for, and the dotted keys the flags set explicitly (not None)."""
    from crackloc.config import apply_overrides, load_config, preset

    if a.config and a.preset:
        raise CracklocError("give --config or --preset, not both (a config file holds every setting)")
    if a.config:
        _refuse_empty_config(a.config)
    cfg = load_config(a.config) if a.config else preset(a.preset or "quick")
    over = _overrides(a)
    over.update({"data.data": a.data and str(Path(a.data).resolve()),
                 "data.manifest": a.manifest and str(Path(a.manifest).resolve())})
    return apply_overrides(cfg, over), {k: v for k, v in over.items() if v is not None}


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _refuse_changed_flags(a: argparse.Namespace, cfg: RunConfig, given: dict[str, Any]) -> None:
    """--resume continues the saved config.yaml: refuse flags (or a --preset/--config) that differ from it."""
    from crackloc.config import load_config

    saved_path = Path(a.out) / "config.yaml"
    if not saved_path.is_file():
        return  # train_run says there is nothing to resume
    saved, wanted = _flat(asdict(load_config(saved_path))), _flat(asdict(cfg))
    keys = list(wanted) if (a.config or a.preset) else list(given)
    keys = [k for k in keys if k in given or k not in ("data.data", "data.manifest")]
    diff = [f"{k}: saved {saved[k]}, given {wanted[k]}" for k in keys if saved.get(k) != wanted[k]]
    if diff:
        raise CracklocError(f"{a.out}: --resume continues the run as saved in its config.yaml, but the flags "
                            f"differ from it ({'; '.join(diff)}); drop those flags to resume, or choose a new "
                            "--out to train with them")


def _run_train(a: argparse.Namespace) -> int:
    from crackloc.evaluation.evaluate import evaluate_run
    from crackloc.training.pipeline import RefusedOnRankZero, train_run

    if not a.resume and not (a.data or a.manifest or a.config):
        raise CracklocError("give --data DIR or --manifest CSV")
    cfg, given = requested_config(a)
    if a.resume:
        _refuse_changed_flags(a, cfg, given)
    try:
        model_path = train_run(cfg, a.out, resume=a.resume)
    except RefusedOnRankZero:
        return 0  # a DDP process other than rank 0: rank 0 prints the refusal and exits 2
    if model_path is None:
        return 0  # DDP: rank 0 alone reports and evaluates
    print(f"model: {model_path}")
    failed = [tuple(f) for f in json.loads((Path(a.out) / "train_summary.json").read_text())["failed_images"]]
    if not a.no_eval:
        m = evaluate_run(a.out)
        t = m["at_0.5"]
        print(f"test: AUROC {t['auroc']:.4f}  accuracy {t['accuracy']:.4f}  F1 {t['f1']:.4f}  "
              f"(n={m['n_test']}; {a.out}/metrics.md)")
        failed += [tuple(f) for f in m["failed_images"] if tuple(f) not in failed]
    return report_failures(failed, noun="image", listed_in=f"{a.out}/train_summary.json, metrics.json")


@command("evaluate", "score a trained model on the test split (metrics.json + metrics.md)")
def _evaluate_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="run folder made by `crackloc train`")
    p.add_argument("--checkpoint", help="model file (default RUN/model.pt)")
    p.add_argument("--manifest", help="split manifest (needed with --checkpoint alone)")
    p.add_argument("--out", help="folder for metrics.json/metrics.md (default: the run folder)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(a: argparse.Namespace) -> int:
    from crackloc.evaluation.evaluate import evaluate_run

    m = evaluate_run(a.run, checkpoint=a.checkpoint, manifest=a.manifest, out=a.out)
    for key in ("at_0.5", "at_val_threshold"):
        t = m[key]
        print(f"{key}: AUROC {t['auroc']:.4f}  accuracy {t['accuracy']:.4f}  precision {t['precision']:.4f}  "
              f"recall {t['recall']:.4f}  F1 {t['f1']:.4f}  (threshold {t['threshold']:.3f})")
    return 0
