"""Experiment subcommands: `experiment` (every method × seed, resumable) and `report`."""

from __future__ import annotations

import argparse
from pathlib import Path

from crackloc.cli.registry import checked, command
from crackloc.config import EXPERIMENT_BUDGET, PRESETS, InferenceConfig
from crackloc.errors import CracklocError

PRESET_HELP = ("quick: the quick preset with the experiment's per-run budget "
               f"{EXPERIMENT_BUDGET['quick']} (2,000 training / 500 val / 1,000 test patches, 2 teacher + 2 "
               "student epochs, bf16); estimated ~1 h per seed for all 11 methods on 2 free CPU cores (VGG-16 "
               "~10 min, PSOL/TS-CAM ~7 min, the ResNet-18 models 2-5 min each), so ~3 h for seeds "
               "0,1,2, about twice that while another job shares the CPU; "
               "paper: as published (all images, up to 30 epochs, early stopping: needs a GPU); "
               "tiny: smoke tests")


@command("experiment", "reproduce Tables I and II: every method x seed on one split manifest, resumable")
def _experiment_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="folder with Positive/ and Negative/ (a split is made once into EXP/split.csv)")
    p.add_argument("--manifest", help="split manifest from `crackloc split` (reused by every run)")
    p.add_argument("--preset", default="quick", choices=list(PRESETS), help=PRESET_HELP)
    p.add_argument("--methods", default="all",
                   help="'all' (crackloc, the 5 baselines, the ablations), 'all+' (also stage 2 'crackseg', "
                        "trained from each seed's crackloc run, and the training-free floors darkness, blackhat, "
                        "ridge, blackhat_ridge_shape) or a comma list, e.g. crackloc,crackseg,ridge")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    p.add_argument("--out", required=True, help="experiment folder EXP (rerun the same command to resume)")
    p.add_argument("--masks", help="folder with images/ and masks/ to score localisation against human masks")
    p.add_argument("--max-images", type=int, default=20,
                   help="human-mask images scored per run (default 20; tiled inference is slow on a CPU)")
    p.add_argument("--loc-scale", type=float, default=6.0,
                   help="upscale the mask images by this before tiling (default 6: CrackForest's 2-5 px "
                        "cracks then look like the 10-30 px cracks of the training patches; see "
                        "docs/localization.md)")
    p.add_argument("--loc-gate", action=argparse.BooleanOptionalAction, default=True,
                   help="gate each window's heatmap by its crack probability (default on)")
    p.add_argument("--line-guide", type=checked("line_guide", "--line-guide"), default=InferenceConfig.line_guide,
                   help="guide every learned map onto the image's dark-line pixels as `crackloc predict` does "
                        f"(default {InferenceConfig.line_guide}; 0 = the models' own maps, as experiments before "
                        "the guide were scored); the training-free floors are always scored as they are")
    p.add_argument("--pretrained", choices=["auto", "none"],
                   help="ImageNet weights for every model: 'auto' (cached files if any) or 'none'")
    p.add_argument("--epochs", type=int, help="student epochs (overrides the preset)")
    p.add_argument("--teacher-epochs", type=int, help="teacher epochs (overrides the preset)")
    p.add_argument("--max-train", type=int, help="training images per run (overrides the preset)")
    p.add_argument("--gpus-per-run", type=checked("devices", "--gpus-per-run", int),
                   help="train each run data-parallel on this many GPUs (DDP, strategy ddp_spawn; the preset's batch "
                        "size stays the global batch); runs still go one after another (docs/scale.md)")
    p.add_argument("--no-report", action="store_true", help="skip `crackloc report` at the end")
    p.set_defaults(func=_run_experiment)


def _run_experiment(a: argparse.Namespace) -> int:
    from crackloc.experiments.methods import parse_methods
    from crackloc.experiments.report import build_report, fmt
    from crackloc.experiments.runner import ExperimentSpec, parse_seeds, run_experiment

    if not (a.data or a.manifest or (Path(a.out) / "split.csv").is_file()):
        raise CracklocError("give --data DIR or --manifest CSV")
    over = {"train.epochs": a.epochs, "train.teacher_epochs": a.teacher_epochs, "data.max_train": a.max_train}
    if a.pretrained:
        over.update({"model.pretrained": a.pretrained, "teacher.pretrained": a.pretrained})
    spec = ExperimentSpec(
        out=Path(a.out), preset=a.preset, methods=parse_methods(a.methods), seeds=parse_seeds(a.seeds),
        data=str(Path(a.data).resolve()) if a.data else "",
        manifest=str(Path(a.manifest).resolve()) if a.manifest else "",
        masks=str(Path(a.masks).resolve()) if a.masks else "", max_images=a.max_images,
        loc_scale=a.loc_scale, loc_gate=a.loc_gate, loc_line_guide=a.line_guide,
        overrides={k: v for k, v in over.items() if v is not None}, gpus_per_run=a.gpus_per_run or 0)
    if spec.masks and not Path(spec.masks).is_dir():
        raise CracklocError(f"{spec.masks}: no such folder")
    summary = run_experiment(spec)
    for method, stats in summary["methods"].items():
        print(f"  {method:28s} test AUROC {fmt(stats['auroc'])}")
    if not a.no_report:
        print(f"report: {build_report(spec.out)}")
    return 0


@command("report", "Markdown + CSV tables (Tables I, II, IoU) and figures of an experiment folder")
def _report_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("exp", metavar="EXP", help="experiment folder made by `crackloc experiment`")
    p.add_argument("--no-figures", action="store_true", help="tables only (figures load every model)")
    p.add_argument("--images", type=int, default=4, help="test images in the qualitative grid (default 4)")
    p.set_defaults(func=_run_report)


def _run_report(a: argparse.Namespace) -> int:
    from crackloc.experiments.report import build_report

    path = build_report(a.exp, figures=not a.no_figures, n_images=a.images)
    print(f"wrote {path} (tables as CSV and figures beside it)")
    return 0
