"""Prediction-side subcommands: predict, demo, export, evaluate-localization."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crackloc.cli.registry import (
    add_inference_options,
    add_scale_options,
    check_scale_options,
    command,
    inference_config,
    report_failures,
)
from crackloc.config import InferenceConfig
from crackloc.errors import CracklocError


def _predictor(a: argparse.Namespace):
    from crackloc.inference.predictor import Predictor

    return Predictor(a.checkpoint, inference_config(a), cache_dir=a.cache_dir)


def _summarize(report, out: Path, *, summary: str | None = None) -> int:
    n_crack = sum(r["crack"] for r in report.records)
    print(f"{len(report.records)} image(s) done ({n_crack} with a crack) → {out}/predictions.jsonl"
          + (f", {out}/{summary}" if summary else ""))
    unmarked = [r["path"] for r in report.records if ((r.get("geometry") or {}).get("marker") or {}).get("found")
                is False]
    if unmarked:  # measured in px only: never silently
        print(f"marker not found in {len(unmarked)} image(s), measured in px only: " + ", ".join(unmarked[:5])
              + (", …" if len(unmarked) > 5 else ""), file=sys.stderr)
    return report_failures(report.failed, noun="input", listed_in=f"{out}/failed.jsonl")


RAY_OPTIONS = ("workers", "address", "cpus_per_worker", "gpus_per_worker")


@command("predict", "crack probability, heatmap PNG, overlay PNG and a JSON line for each image")
def _predict_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR",
                   help="image files and/or folders (with --engine ray also s3://, gs://… URIs of objects or prefixes)")
    p.add_argument("--input-list", action="append", default=[], metavar="FILE",
                   help="also predict the inputs listed in FILE: one path or URI per line (# comments), or a "
                        "CSV's `path` column (else its first); may be repeated")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--geometry", action="store_true", help="measure each crack (length, width, orientation)")
    add_scale_options(p, photo="each photo")
    p.add_argument("--max-pixels", type=int, help="refuse images above this many pixels (default 100 MP)")
    p.add_argument("--resume", action="store_true",
                   help="keep the images already done in --out (record and PNGs on disk) with the same model and "
                        "settings, and do the rest; results of inputs not given this time stay")
    p.add_argument("--resume-mixed", action="store_true",
                   help="resume even where the earlier results were made with another model or settings")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the earlier results in --out (default: they are moved to --out/earlier-<time>/)")
    p.add_argument("--save", choices=["all", "mask", "record"], default="all",
                   help="what each image gets besides its line of predictions.jsonl: all = heatmap, overlay and "
                        "colour PNGs (default); mask = the 8-bit heatmap PNG only (the crack mask is map >= 128); "
                        "record = no PNG and no line guide (fastest: to sort or screen an archive)")
    g = p.add_argument_group("engine (--engine ray: a Ray Data actor pool, same outputs plus summary.parquet)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: a pool of Ray actors on this machine or a cluster")
    g.add_argument("--workers", type=int,
                   help="ray: actors in the pool, one model each (default: one per GPU of the cluster, else 1)")
    g.add_argument("--address", help="ray: join this running cluster (`auto`: the one `ray start --head` or "
                                     "KubeRay made); default: start a local Ray with this machine's cores")
    g.add_argument("--cpus-per-worker", type=float,
                   help="ray: CPUs per actor, also its torch threads (default: 1 with GPUs, else the cores "
                        "split evenly among the workers)")
    g.add_argument("--gpus-per-worker", type=float,
                   help="ray: GPUs per actor (default 1 when the cluster has GPUs, else 0; 0.5 shares one GPU "
                        "between two actors)")
    add_inference_options(p)
    p.set_defaults(func=_run_predict)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _inputs(a: argparse.Namespace) -> list[str]:
    """The positional inputs, then those of each --input-list; refuses none, and URIs without Ray."""
    from crackloc.inference.batch import read_input_list

    inputs = list(a.inputs)
    for path in a.input_list:
        inputs += read_input_list(path)
    if not inputs:
        raise CracklocError("no inputs: give image files or folders, or --input-list FILE"
                            + (" (the lists given are empty)" if a.input_list else ""))
    if a.engine == "local":
        from urllib.parse import unquote, urlparse

        inputs = [unquote(urlparse(i).path) if i.lower().startswith("file://") else i for i in inputs]
        uri = next((i for i in inputs if "://" in i), None)
        if uri:
            raise CracklocError(f"{uri}: object-store URIs are read by --engine ray (local files and folders "
                                "by both engines)")
        given = [f"--{k.replace('_', '-')}" for k in RAY_OPTIONS if getattr(a, k) is not None]
        if given:
            raise CracklocError(f"{given[0]} is an option of --engine ray")
    return inputs


def _run_predict(a: argparse.Namespace) -> int:
    from crackloc.inference.batch import BatchInterrupted, predict_files

    check_scale_options(a)
    if a.max_pixels is not None and a.max_pixels < 1:
        raise CracklocError("--max-pixels must be positive")
    inputs = _inputs(a)
    options = {"geometry": a.geometry or a.mm_per_px is not None or a.marker is not None,
               "mm_per_px": a.mm_per_px, "marker": a.marker,
               "max_pixels": a.max_pixels, "resume": a.resume, "save": a.save, "overwrite": a.overwrite,
               "resume_mixed": a.resume_mixed, "log": _stderr}
    if a.overwrite and (a.resume or a.resume_mixed):
        raise CracklocError("--overwrite replaces the earlier results, --resume keeps them: give one")
    summary = None
    try:
        if a.engine == "ray":  # Ray is imported only here
            from crackloc.inference.ray_engine import SUMMARY, predict_files_ray

            report = predict_files_ray(a.checkpoint, inference_config(a), inputs, a.out, workers=a.workers,
                                       address=a.address, cpus_per_worker=a.cpus_per_worker,
                                       gpus_per_worker=a.gpus_per_worker, cache_dir=a.cache_dir, **options)
            summary = SUMMARY
        else:
            report = predict_files(_predictor(a), inputs, a.out, **options)
    except BatchInterrupted as exc:
        _stderr(f"crackloc predict: interrupted after {exc.done} of {exc.total} images; "
                "rerun the same command with --resume to finish")
        return 130
    return _summarize(report, Path(a.out), summary=summary)


@command("demo", "the README's main job: train on the bundled sample, then map cracks in the sample photo")
def _demo_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--skip-train", action="store_true", help="only predict with the bundled model")
    p.add_argument("--epochs", type=int, default=4, help="student epochs on the sample (default 4)")
    p.set_defaults(func=_run_demo)


def _move_aside(path: Path) -> Path:
    """Rename `path` to a fresh `PATH.old-<YYYYmmdd-HHMMSS>[-N]` next to it: → the new path."""
    import time

    base = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    target, k = base, 1
    while target.exists() or target.is_symlink():
        k += 1
        target = base.with_name(f"{base.name}-{k}")
    path.rename(target)
    return target


def _run_demo(a: argparse.Namespace) -> int:
    from crackloc.config import preset
    from crackloc.evaluation.evaluate import evaluate_run
    from crackloc.inference.batch import predict_files
    from crackloc.inference.predictor import ASSETS, BUNDLED_MODEL, Predictor
    from crackloc.training.pipeline import train_run

    out = Path(a.out)
    photo = ASSETS / "sample_photo.jpg"
    if not a.skip_train:
        run = out / "run"
        if run.exists() or run.is_symlink():  # never delete: the folder may hold the user's own files
            print(f"moved the earlier {run} aside to {_move_aside(run)}")
        cfg = preset("tiny", **{"data.data": str(ASSETS / "sample"), "model.pretrained": "none",
                                "teacher.pretrained": "none", "train.epochs": a.epochs})
        print("1/3 training the teacher and the proposed model on the 200 bundled patches (tiny preset)")
        train_run(cfg, run)
        m = evaluate_run(run)["at_0.5"]
        print(f"    test split of the sample: AUROC {m['auroc']:.3f}, accuracy {m['accuracy']:.3f} "
              f"(30 patches at 112 px, random init: a smoke test, not a benchmark) → {run}/metrics.md")
        print("2/3 mapping the sample photo with the model just trained")
        own = Predictor(run / "model.pt", InferenceConfig(tile=cfg.data.image_size))
        predict_files(own, [photo], out / "own_model", overwrite=True, progress=False)
    if BUNDLED_MODEL.is_file():
        print("3/3 mapping the sample photo with the bundled model (stage 2: pixel crack masks, trained on the "
              "11,200-patch Özgenel training split; docs/model_card.md)")
        report = predict_files(Predictor(), [photo], out / "bundled_model", geometry=True, overwrite=True,
                               progress=False)
        rec = report.records[0]
        print(f"    crack probability {rec['crack_probability']:.3f}, {rec['geometry']['count']} cracks, "
              f"overlay: {out / 'bundled_model' / rec['overlay_png']}")
    else:
        print("3/3 skipped: this installation has no bundled model")
    return 0


@command("evaluate-localization", "score full-resolution heatmaps against human pixel masks (PxAP, F1, IoU)")
def _evaluate_loc_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder with images/ and masks/ (same file stems)")
    p.add_argument("--out", required=True, help="output folder (metrics.json, pr_curve.png, overlays.png)")
    p.add_argument("--dev-fraction", type=float, default=0.25,
                   help="share of images used only to choose the map threshold (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dev/test partition (default 0)")
    p.add_argument("--tolerance", type=int, default=2,
                   help="px distance at which a predicted crack pixel still counts (default 2; 0 = exact)")
    p.add_argument("--max-images", type=int, help="score a seeded subset of this many images")
    p.add_argument("--model", dest="floor", metavar="NAME",
                   help="score a training-free floor instead of a model file: darkness, blackhat, ridge or "
                        "blackhat_ridge_shape (no --checkpoint)")
    p.add_argument("--crack-width", type=float, default=5.0,
                   help="expected crack width in px at the tiled scale, for --model floors (default 5)")
    add_inference_options(p)
    p.set_defaults(func=_run_evaluate_loc)


def _loc_predictor(a: argparse.Namespace):
    """The model file's predictor, or a training-free floor's (`--model`)."""
    if not a.floor:
        return _predictor(a)
    from crackloc.config import ModelConfig
    from crackloc.inference.predictor import Predictor
    from crackloc.models.registry import build_model

    if a.checkpoint:
        raise CracklocError("give --checkpoint or --model, not both")
    model = build_model(ModelConfig(name=a.floor, crack_width=a.crack_width, pretrained="none"))
    if getattr(model, "trainable", True):
        raise CracklocError(f"--model takes a training-free floor (darkness, blackhat, ridge, "
                            f"blackhat_ridge_shape); {a.floor!r} needs a trained --checkpoint")
    return Predictor.from_model(model, inference_config(a), name=f"floor:{a.floor}")


def _run_evaluate_loc(a: argparse.Namespace) -> int:
    from crackloc.evaluation.localize_run import evaluate_localization

    m = evaluate_localization(_loc_predictor(a), a.data, a.out, dev_fraction=a.dev_fraction, seed=a.seed,
                              tolerance=a.tolerance, max_images=a.max_images)
    width = m.get("width_error_px_median")
    print(f"PxAP {m['pxap']:.4f}  F1 {m['f1']:.4f}  IoU {m['iou']:.4f}  (threshold {m['threshold']:.3f} "
          f"chosen on {m['n_dev']} dev images, scored on {m['n_test']}; ODS F1 {m['ods_f1']:.4f}, "
          f"OIS F1 {m['ois_f1']:.4f}; pixel-exact ODS/OIS F1 {m['ods_f1_0px']:.4f}/{m['ois_f1_0px']:.4f}; "
          f"width error median "
          f"{'—' if width is None else f'{width:.2f}'} px) → {a.out}/metrics.json")
    failed = [(f["path"], f["reason"].removeprefix(f"{f['path']}: ")) for f in m.get("failed", [])]
    return report_failures(failed, noun="image", listed_in=f"{a.out}/metrics.json")


@command("export", "export a model file to ONNX (dynamic batch; logits + heatmap, AHR threshold in the graph)")
def _export_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="model file (default: the bundled model)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--image-size", type=int, default=224, help="input side the graph is built for (default 224)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (≥ 18, default 18)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=_run_export)


def _run_export(a: argparse.Namespace) -> int:
    import json

    from crackloc.inference.export import export_onnx
    from crackloc.inference.predictor import default_checkpoint
    from crackloc.models.checkpoint import load_model

    if not a.force and (Path(a.out).exists() or Path(a.out).is_symlink()):
        raise CracklocError(f"{a.out} already exists: pass --force to overwrite it, or choose another --out")
    model, payload = load_model(a.checkpoint or default_checkpoint())
    meta = {"config": json.dumps(payload["config"]),
            "val_threshold": str(payload.get("meta", {}).get("val_threshold", 0.5))}
    path = export_onnx(model, a.out, image_size=a.image_size, opset=a.opset, metadata=meta)
    print(f"wrote {path} (checked against torch on a random batch)")
    return 0
