"""`crackloc train`: split → teacher → pseudo masks → student → test evaluation, in one RUN folder.

RUN/
  config.yaml            the full RunConfig (data.manifest names the split manifest)
  split.csv              the manifest, unless an existing one was given
  teacher.pt, model.pt   crackloc model files (weights_only-safe)
  pseudo_masks.pt        cached teacher pseudo masks of the training split
  teacher_epochs.csv, student_epochs.csv    per-epoch metrics
  checkpoints/{teacher,student}/            Lightning best/last (for --resume)
  metrics.json, metrics.md                  test metrics (written by evaluate)

With `teacher_dir`, the teacher (and a keyed cache of its pseudo masks) lives in that shared
folder instead, trained there once, and RUN gets a hard link (or copy) of `teacher.pt` and of
the pseudo masks it used, so every run folder stays self-contained.

Under DDP with `train.strategy` 'ddp' (`crackloc.training.fit.Ranks`) every process runs this
pipeline: rank 0 checks, writes the run folder and sends the config and split rows to the
others; every rank decodes the data and joins each `fit`; rank 0 makes (or reuses) the pseudo
masks, saves them and sends them to the others; rank 0 alone writes teacher.pt, pseudo_masks.pt,
model.pt and train_summary.json. Lightning's own checkpoints and epoch CSVs are rank 0's too.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch

from crackloc.config import RunConfig, from_dict, load_config, save_config
from crackloc.data.dataset import DecodedSplit
from crackloc.data.manifest import (
    check_parts,
    load_splits,
    resolve_manifest,
    split_failures,
    write_split,
)
from crackloc.errors import CracklocError
from crackloc.io import save_torch, write_json
from crackloc.models.checkpoint import load_model, save_model
from crackloc.models.registry import build_model
from crackloc.tensors import MAP_ALIGNMENT, predict_batches
from crackloc.training.fit import Ranks, fit_model, per_device_batch, train_precision
from crackloc.training.sources import SOURCES
from crackloc.training.threshold import choose_threshold


def student_pseudo(cfg: RunConfig, model: torch.nn.Module) -> tuple[str | None, tuple[int, int]]:
    """Which pseudo masks the student trains against ('cam', 'ddt', 'refined' or None) and their size.

    Every kind is made at the patch size (S, S): the training step augments masks with their
    images at pixel level and only then pools them onto the student's cells (`LitLocalizer`), so
    flips and rotations cannot move a target off the pixels its cell describes.
    """
    wants = model.uses_pseudo_masks and cfg.train.lambda_l1 > 0
    return (model.pseudo_source if wants else None), (cfg.data.image_size, cfg.data.image_size)


def link_file(src: Path, dst: Path) -> Path:
    """Make `dst` the same file as `src`: a hard link where possible, else a copy (replaces dst)."""
    if dst.exists() and os.path.samefile(src, dst):
        return dst
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def prepare_run(cfg: RunConfig, out: Path, *, resume: bool) -> RunConfig:
    """Check that RUN can be created (or reopened with --resume, keeping its saved config); writes nothing."""
    saved = out / "config.yaml"
    if out.exists() and not out.is_dir():
        raise CracklocError(f"{out}: not a folder; choose another --out")
    if saved.is_file() and not resume:
        raise CracklocError(f"{out} already holds a run: pass --resume to continue it, or choose a new --out")
    if resume and saved.is_file():
        return load_config(saved)
    if resume:
        raise CracklocError(f"{out}: nothing to resume (no config.yaml)")
    return cfg


@contextmanager
def undo_on_refusal(out: Path, *, enabled: bool) -> Iterator[None]:
    """Create `out`; if a refusal (CracklocError) escapes, remove what this call created in it.

    Only entries that were not in `out` before are removed, and the folders created for it
    (if left empty); an interrupt or an OS error keeps everything, for --resume.
    """
    missing = [d for d in (out, *out.parents) if not d.exists()]
    before = {p.name for p in out.iterdir()} if out.is_dir() else set()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except CracklocError:
        if enabled:
            for entry in [e for e in out.iterdir() if e.name not in before]:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            for d in missing:  # deepest first
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
        raise


@dataclass
class Built:
    """A model built right after `seed_everything(seed)`, and the torch RNG state just after its build."""

    model: torch.nn.Module
    rng: torch.Tensor

    def resume_rng(self, seed: int) -> torch.nn.Module:
        """Re-seed as the pipeline does, then continue from the state the build left: → the model."""
        L.seed_everything(seed, workers=True, verbose=False)
        torch.set_rng_state(self.rng)
        return self.model


def build_models(cfg: RunConfig) -> tuple[Built, Built]:
    """Build teacher and student once each, before any write (bad weights refuse here).

    Each is built right after `seed_everything(seed)`, as the pipeline would build it, inside
    `fork_rng` so the caller's random state is untouched; the pipeline later restores the state
    each build left, so results equal building them in place, and nothing is built twice.
    """
    with torch.random.fork_rng(devices=[]):
        L.seed_everything(cfg.train.seed, workers=True, verbose=False)
        teacher = build_model(cfg.teacher)
        teacher_rng = torch.get_rng_state()
        L.seed_everything(cfg.train.seed, workers=True, verbose=False)
        student = build_model(cfg.model)
        return Built(teacher, teacher_rng), Built(student, torch.get_rng_state())


def train_teacher(cfg: RunConfig, out: Path, splits: dict[str, DecodedSplit], *, progress: bool,
                  model: torch.nn.Module | None = None, ranks: Ranks | None = None) -> torch.nn.Module:
    """Train (or reload) the CAM teacher on the training split (`model`: the teacher, built already).

    Under DDP rank 0 decides whether teacher.pt exists and alone saves it.
    """
    ranks = ranks or Ranks()
    path = out / "teacher.pt"
    if ranks.broadcast(path.is_file()):
        return load_model(path)[0]
    teacher = fit_model(cfg.teacher, cfg.train, splits["train"], splits["val"], ckpt_dir=out / "checkpoints/teacher",
                        csv_path=out / "teacher_epochs.csv", epochs=cfg.train.teacher_epochs, model=model,
                        progress=progress)
    if ranks.is_zero:
        save_model(path, teacher, cfg.teacher, role="teacher")
    return teacher


def _cached(path: Path | None, train: DecodedSplit, source: str, grid: tuple[int, int],
            target: str, origin: str | None = None) -> torch.Tensor | None:
    """The masks in a pseudo-mask cache file if it was made for these images, source, size, cell
    alignment, target kind and origin (`SOURCES[source].origin`; files from before `MAP_ALIGNMENT`, on a student's grid,
    or without `origin`, are remade)."""
    if path is None or not path.is_file():
        return None
    cached = torch.load(path, map_location="cpu", weights_only=True)
    fits = (cached["paths"] == train.paths and cached.get("source", "cam") == source
            and tuple(cached["masks"].shape[-2:]) == tuple(grid) and cached.get("alignment") == MAP_ALIGNMENT
            and cached.get("target", "binary") == target and cached.get("origin") == origin)
    return cached["masks"] if fits else None


def cached_pseudo_masks(cfg: RunConfig, out: Path, teacher: torch.nn.Module | None, train: DecodedSplit, *,
                        source: str, grid: tuple[int, int], shared: Path | None = None,
                        progress: bool) -> torch.Tensor:
    """Pseudo masks ('cam': teacher CAM, 'ddt': DDT maps, 'refined': stage-2 pixel labels), made once.

    Made at `grid` = the patch size, so they do not depend on the student (its cells are read
    off them in the training step). Cached as RUN/pseudo_masks.pt and, with `shared`, also as
    shared/pseudo_{source}[_soft]_{h}x{w}[_{digest}].pt for the other runs that share the teacher
    (stage 2's labels carry the sha256 of the model file that made them; CAM masks their cut).
    """
    path = out / "pseudo_masks.pt"
    kind = "" if cfg.train.pseudo_target == "binary" else f"_{cfg.train.pseudo_target}"
    origin, suffix = SOURCES[source].origin(cfg)
    keyed = shared / f"pseudo_{source}{kind}_{grid[0]}x{grid[1]}{suffix}.pt" if shared else None
    for candidate in (path, keyed):
        masks = _cached(candidate, train, source, grid, cfg.train.pseudo_target, origin)
        if masks is not None:
            if candidate != path:
                link_file(candidate, path)
            return masks
    masks = SOURCES[source].make(cfg, teacher, train, grid, progress)
    save_torch(path, {"paths": train.paths, "masks": masks, "source": source, "alignment": MAP_ALIGNMENT,
                      "target": cfg.train.pseudo_target, "origin": origin})
    if keyed is not None:
        link_file(path, keyed)
    return masks


def train_run(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
              teacher_dir: str | Path | None = None) -> Path:
    """Run the whole teacher → student pipeline; returns the path of the student's model file.

    Every check that can refuse (run folder, data, manifest leaks, both classes in each split
    part, readable images, model weights) runs before anything is written into `out`.
    `teacher_dir`: a folder shared by runs of the same seed and data, where the teacher is
    trained once (or found) and pseudo masks are cached; default: RUN itself.
    With `train.strategy` 'ddp' over several devices, every DDP process calls this (module docstring).
    """
    out = Path(out)
    saved = out / "config.yaml"
    train_cfg = (load_config(saved) if resume and saved.is_file() else cfg).train
    per_device_batch(train_cfg)  # refused before any other process starts
    ranks = Ranks(train_cfg)
    ranks.launch()  # Lightning's launcher: a node's other processes start now, re-running this command
    if not ranks.is_zero:
        return _follow_run(out, ranks, teacher_dir=teacher_dir)
    try:
        cfg = prepare_run(cfg, out, resume=resume)
        t0 = time.time()
        root, rows, stats = resolve_manifest(cfg, progress=progress)
        check_parts(cfg, rows)
        splits = load_splits(cfg, root, rows, ("train", "val"), progress=progress)
        built = build_models(cfg)
        with undo_on_refusal(out, enabled=not resume):
            if stats is not None:
                write_split(cfg, out, root, rows, stats)
            save_config(cfg, out / "config.yaml")
            ranks.broadcast(("run", asdict(cfg), str(root), rows))
            return _train_pipeline(cfg, out, splits, built, t0=t0, teacher_dir=teacher_dir, progress=progress,
                                   ranks=ranks)
    except CracklocError as exc:
        if ranks.world > 1 and not ranks.connected:  # refused before the others were told to start
            ranks.broadcast(("refused", str(exc)))
        elif ranks.world > 1:
            ranks.stop_others()
        raise
    except BaseException:
        ranks.stop_others()  # they would wait for rank 0 until the process group times out
        raise


class RefusedOnRankZero(CracklocError):
    """Rank 0 refused the run (and says why); the other DDP processes stop quietly."""


def _follow_run(out: Path, ranks: Ranks, *, teacher_dir: str | Path | None) -> Path:
    """A DDP rank other than 0: take the config and split rows rank 0 checked, decode, train alongside."""
    message = ranks.broadcast(None)
    if message[0] == "refused":
        raise RefusedOnRankZero(message[1])
    _, cfg_dict, root, rows = message
    cfg = from_dict(RunConfig, cfg_dict)
    splits = load_splits(cfg, Path(root), rows, ("train", "val"), progress=False)
    built = build_models(cfg)
    return _train_pipeline(cfg, out, splits, built, t0=time.time(), teacher_dir=teacher_dir, progress=False,
                           ranks=ranks)


def _train_pipeline(cfg: RunConfig, out: Path, splits: dict[str, DecodedSplit], built: tuple[Built, Built], *,
                    t0: float, teacher_dir: str | Path | None, progress: bool, ranks: Ranks | None = None) -> Path:
    """Teacher, pseudo masks, student, validation threshold and model file of a prepared run."""
    ranks = ranks or Ranks()
    shared = Path(teacher_dir) if teacher_dir is not None else out
    if ranks.is_zero:
        shared.mkdir(parents=True, exist_ok=True)
    if not getattr(built[1].model, "trainable", True):  # a training-free floor: only the val threshold
        if ranks.is_zero:
            _finish(cfg, out, splits, built[1].model, t0=t0)
        ranks.barrier()
        return out / "model.pt"
    source, grid = student_pseudo(cfg, built[1].model)
    teacher = None
    if source is None or SOURCES[source].needs_teacher:  # stage 2 learns from model.init_from instead
        teacher = train_teacher(cfg, shared, splits, progress=progress,
                                model=built[0].resume_rng(cfg.train.seed), ranks=ranks)
        if shared != out and ranks.is_zero:
            link_file(shared / "teacher.pt", out / "teacher.pt")
    student = built[1].resume_rng(cfg.train.seed)  # the pseudo-mask pass below draws no random numbers
    pseudo = None
    if source is not None:
        if ranks.is_zero:  # rank 0 makes (or reuses) and saves them; the others get the same tensor
            pseudo = cached_pseudo_masks(cfg, out, teacher, splits["train"], source=source, grid=grid,
                                         shared=shared if shared != out else None,
                                         progress=progress)
        pseudo = ranks.broadcast(pseudo)
    model = fit_model(cfg.model, cfg.train, splits["train"], splits["val"], ckpt_dir=out / "checkpoints/student",
                      csv_path=out / "student_epochs.csv", epochs=cfg.train.epochs, pseudo=pseudo,
                      model=student, progress=progress)
    if ranks.is_zero:
        _finish(cfg, out, splits, model, t0=t0)
    ranks.barrier()  # model.pt is complete before any process returns its path
    return out / "model.pt"


def _finish(cfg: RunConfig, out: Path, splits: dict[str, DecodedSplit], model: torch.nn.Module, *, t0: float) -> Path:
    """Validation threshold, train_summary.json and model.pt (rank 0)."""
    val_probs, _ = predict_batches(model, splits["val"].images, precision=cfg.train.precision)
    threshold = choose_threshold(val_probs, splits["val"].labels)
    failed = split_failures(out) + [f for s in splits.values() for f in s.failed]
    meta = {"role": "student", "val_threshold": threshold, "train_seconds": round(time.time() - t0, 1),
            "n_train": len(splits["train"].labels), "n_val": len(splits["val"].labels),
            "precision": train_precision(cfg.train), "pretrained": cfg.model.pretrained,
            "pretrained_source": getattr(model, "pretrained_source", None)
            or getattr(getattr(model, "backbone", None), "pretrained_source", "none"),
            "failed_images": failed}
    write_json(out / "train_summary.json", meta)
    return save_model(out / "model.pt", model, cfg.model, **meta)
