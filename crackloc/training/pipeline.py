"""`crackloc train` as plain stages: check → record → teacher? → labels → model → finish, in one RUN folder.

Each stage takes what the earlier ones made (`Prepared`, the teacher, the labels) and calls down
only: into `crackloc.training.fit` (the one file that touches Lightning's Trainer, launcher and
logger) to fit a model, and into `crackloc.training.sources` for the labels' recipe.

RUN/
  config.yaml            the full RunConfig (data.manifest names the split manifest)
  split.csv              the manifest, unless an existing one was given
  teacher.pt, model.pt   crackloc model files (weights_only-safe)
  pseudo_masks.pt        cached teacher pseudo masks of the training split
  logs/{teacher,student}/version_N/metrics.csv   Lightning's CSVLogger (`fit.epoch_rows` reads them)
  checkpoints/{teacher,student}/            Lightning best/last (for --resume)
  metrics.json, metrics.md                  test metrics (written by evaluate)

With `teacher_dir`, the teacher (and a keyed cache of its pseudo masks) lives in that shared
folder instead, trained there once, and RUN gets a hard link (or copy) of `teacher.pt` and of
the pseudo masks it used, so every run folder stays self-contained.

Under DDP with `train.strategy` 'ddp' (`crackloc.training.fit.Ranks`) every process runs this
pipeline: rank 0 checks, writes the run folder and sends the config and split rows to the
others; every rank decodes the data and joins each `fit`; rank 0 makes (or reuses) the pseudo
masks, saves them and sends them to the others; rank 0 alone writes teacher.pt, pseudo_masks.pt,
model.pt and train_summary.json. Lightning's own checkpoints and logs are rank 0's too.
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
from crackloc.training.fit import Ranks, fit_model, start
from crackloc.training.sources import LabelPlan, label_plan
from crackloc.training.threshold import choose_threshold


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


def cached_labels(path: Path | None, train: DecodedSplit, source: str, grid: tuple[int, int],
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


@dataclass
class Prepared:
    """A checked and recorded run: what every later stage reads (the same on every DDP rank)."""

    cfg: RunConfig
    out: Path  # RUN
    shared: Path  # teacher_dir or RUN: teacher.pt and the keyed pseudo-mask cache
    splits: dict[str, DecodedSplit]  # "train", "val"
    teacher: Built
    student: Built
    plan: LabelPlan
    ranks: Ranks
    t0: float
    progress: bool

    @property
    def trains(self) -> bool:
        """False for a training-free floor (only its validation threshold is set)."""
        return getattr(self.student.model, "trainable", True)


def train_run(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
              teacher_dir: str | Path | None = None) -> Path | None:
    """Run the whole pipeline; → the path of the student's model file (None on DDP ranks other than 0).

    Every check that can refuse (run folder, data, manifest leaks, both classes in each split
    part, readable images, model weights) runs before anything is written into `out`.
    `teacher_dir`: a folder shared by runs of the same seed and data, where the teacher is
    trained once (or found) and pseudo masks are cached; default: RUN itself.
    With `train.strategy` 'ddp' over several devices, every DDP process calls this (module docstring).
    """
    out = Path(out)
    saved = out / "config.yaml"
    ranks = start((load_config(saved) if resume and saved.is_file() else cfg).train)
    if not ranks.is_zero:
        _stages(_follow(out, ranks, teacher_dir=teacher_dir))
        return None
    try:
        cfg = prepare_run(cfg, out, resume=resume)
        t0 = time.time()
        root, rows, stats = resolve_manifest(cfg, progress=progress)
        check_parts(cfg, rows)
        splits = load_splits(cfg, root, rows, ("train", "val"), progress=progress)
        teacher, student = build_models(cfg)
        plan = label_plan(cfg, student.model)
        with undo_on_refusal(out, enabled=not resume):
            if stats is not None:
                write_split(cfg, out, root, rows, stats)
            save_config(cfg, out / "config.yaml")
            ranks.broadcast(("run", asdict(cfg), str(root), rows))
            shared = Path(teacher_dir) if teacher_dir is not None else out
            return _stages(Prepared(cfg, out, shared, splits, teacher, student, plan, ranks, t0, progress))
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


def _follow(out: Path, ranks: Ranks, *, teacher_dir: str | Path | None) -> Prepared:
    """A DDP rank other than 0: take the config and split rows rank 0 checked, decode, build."""
    message = ranks.broadcast(None)
    if message[0] == "refused":
        raise RefusedOnRankZero(message[1])
    _, cfg_dict, root, rows = message
    cfg = from_dict(RunConfig, cfg_dict)
    splits = load_splits(cfg, Path(root), rows, ("train", "val"), progress=False)
    teacher, student = build_models(cfg)
    shared = Path(teacher_dir) if teacher_dir is not None else out
    return Prepared(cfg, out, shared, splits, teacher, student, label_plan(cfg, student.model), ranks,
                    time.time(), False)


def _stages(p: Prepared) -> Path:
    """teacher? → labels → model → finish."""
    if p.ranks.is_zero:
        p.shared.mkdir(parents=True, exist_ok=True)
    teacher = teacher_stage(p)
    labels = labels_stage(p, teacher)
    return finish_stage(p, model_stage(p, labels))


def teacher_stage(p: Prepared) -> torch.nn.Module | None:
    """Train (or reload) the CAM teacher when the labels need one; rank 0 decides whether teacher.pt
    exists and alone saves it (and links it into RUN when it lives in a shared folder)."""
    if not (p.trains and p.plan.needs_teacher):
        return None
    cfg, path = p.cfg, p.shared / "teacher.pt"
    if p.ranks.broadcast(path.is_file()):
        teacher = load_model(path)[0]
    else:
        teacher = fit_model(cfg.teacher, cfg.train, p.splits["train"], p.splits["val"],
                            ckpt_dir=p.shared / "checkpoints/teacher", log_dir=p.shared / "logs/teacher",
                            epochs=cfg.train.teacher_epochs, model=p.teacher.resume_rng(cfg.train.seed),
                            progress=p.progress)
        if p.ranks.is_zero:
            save_model(path, teacher, cfg.teacher, role="teacher")
    if p.shared != p.out and p.ranks.is_zero:
        link_file(path, p.out / "teacher.pt")
    return teacher


def labels_stage(p: Prepared, teacher: torch.nn.Module | None) -> torch.Tensor | None:
    """The student's pseudo masks, or None: rank 0 makes (or reuses) and saves them; the others get the same tensor."""
    if not p.trains or p.plan.source is None:
        return None
    masks = None
    if p.ranks.is_zero:
        masks = cached_pseudo_masks(p, teacher)
    return p.ranks.broadcast(masks)


def cached_pseudo_masks(p: Prepared, teacher: torch.nn.Module | None) -> torch.Tensor:
    """Pseudo masks ('cam': teacher CAM, 'ddt': DDT maps, 'refined': stage-2 pixel labels), made once.

    Made at the patch size, so they do not depend on the student (its cells are read off them
    in the training step). Cached as RUN/pseudo_masks.pt and, in a shared teacher folder, also as
    shared/pseudo_{source}[_soft]_{h}x{w}[_{digest}].pt for the other runs that share the teacher
    (stage 2's labels carry the sha256 of the model file that made them; CAM masks their cut).
    """
    cfg, plan, train = p.cfg, p.plan, p.splits["train"]
    path, (h, w) = p.out / "pseudo_masks.pt", plan.grid
    kind = "" if cfg.train.pseudo_target == "binary" else f"_{cfg.train.pseudo_target}"
    keyed = p.shared / f"pseudo_{plan.source}{kind}_{h}x{w}{plan.suffix}.pt" if p.shared != p.out else None
    for candidate in (path, keyed):
        masks = cached_labels(candidate, train, plan.source, plan.grid, cfg.train.pseudo_target, plan.origin)
        if masks is not None:
            if candidate != path:
                link_file(candidate, path)
            return masks
    masks = plan.make(cfg, teacher, train, plan.grid, p.progress)
    save_torch(path, {"paths": train.paths, "masks": masks, "source": plan.source, "alignment": MAP_ALIGNMENT,
                      "target": cfg.train.pseudo_target, "origin": plan.origin})
    if keyed is not None:
        link_file(path, keyed)
    return masks


def model_stage(p: Prepared, labels: torch.Tensor | None) -> torch.nn.Module:
    """Fit the student (a training-free floor is kept as built). Its random state is restored right
    before the fit, so the run does not depend on whether the labels were made or found cached."""
    cfg = p.cfg
    student = p.student.resume_rng(cfg.train.seed)
    if not p.trains:
        return student
    return fit_model(cfg.model, cfg.train, p.splits["train"], p.splits["val"], ckpt_dir=p.out / "checkpoints/student",
                     log_dir=p.out / "logs/student", epochs=cfg.train.epochs, pseudo=labels, model=student,
                     progress=p.progress)


def finish_stage(p: Prepared, model: torch.nn.Module) -> Path:
    """Rank 0: validation threshold, train_summary.json and model.pt; every rank waits until they are written."""
    cfg, out, splits = p.cfg, p.out, p.splits
    if p.ranks.is_zero:
        val_probs, _ = predict_batches(model, splits["val"].images, precision=cfg.train.precision)
        threshold = choose_threshold(val_probs, splits["val"].labels)
        failed = split_failures(out) + [f for s in splits.values() for f in s.failed]
        meta = {"role": "student", "val_threshold": threshold, "train_seconds": round(time.time() - p.t0, 1),
                "n_train": len(splits["train"].labels), "n_val": len(splits["val"].labels),
                "precision": p.ranks.precision, "pretrained": cfg.model.pretrained,
                "pretrained_source": getattr(model, "pretrained_source", None)
                or getattr(getattr(model, "backbone", None), "pretrained_source", "none"),
                "failed_images": failed}
        write_json(out / "train_summary.json", meta)
        save_model(out / "model.pt", model, cfg.model, **meta)
    p.ranks.barrier()  # model.pt is complete before any process returns its path
    return out / "model.pt"
