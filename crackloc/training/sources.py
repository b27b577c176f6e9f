"""The kinds of pseudo masks a student can learn from, in one table (no branching on their names).

A model names its kind in `pseudo_source` ('cam', 'ddt' or 'refined'); `SOURCES` says, for each,
whether a CAM teacher must be trained first, how the masks of a training split are made, and
what else decides them (for the cache). Stage-2 models (`dense_training`) learn pixel labels with
an ignore band; a stage-2 model file given as `model.init_from` is a self-training round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from crackloc.config import RunConfig, TrainConfig
from crackloc.data.dataset import DecodedSplit
from crackloc.errors import CracklocError
from crackloc.io import file_digest
from crackloc.models.checkpoint import load_model
from crackloc.training.ddt import ddt_pseudo_masks
from crackloc.training.pseudo import pseudo_masks
from crackloc.training.refine_labels import LABELS_VERSION, refined_labels, self_training_labels

DEFAULT_PSEUDO_PERCENTILE = TrainConfig.pseudo_percentile
Maker = Callable[[RunConfig, "torch.nn.Module | None", DecodedSplit, tuple[int, int], bool], torch.Tensor]


@dataclass(frozen=True)
class PseudoSource:
    """How one kind of pseudo mask is made.

    Attributes:
        needs_teacher: a CAM teacher is trained first (stage 2 learns from `model.init_from` instead).
        make: (cfg, teacher, train split, grid, progress) → masks of the split at `grid`.
        origin: cfg → (what else decides the masks, the cache-name suffix that tells sets apart).
    """

    needs_teacher: bool
    make: Maker
    origin: Callable[[RunConfig], tuple[str | None, str]]


def stage2_labels(cfg: RunConfig, train: DecodedSplit, *, progress: bool) -> torch.Tensor:
    """Pixel pseudo-labels of the training split from the model file `model.init_from`: a stage-1
    model's maps refined by the image, or (self-training round) a stage-2 model's own confident pixels."""
    if not cfg.model.init_from:
        raise CracklocError("stage 2 needs a stage-1 model file: set model.init_from (--init-from RUN/model.pt)")
    source = load_model(cfg.model.init_from)[0]
    if getattr(source, "dense_training", False):
        return self_training_labels(source, train.images, train.labels, precision=cfg.train.precision,
                                    progress=progress)
    return refined_labels(source, train.images, train.labels, precision=cfg.train.precision, progress=progress)


def _cam(cfg: RunConfig, teacher, train: DecodedSplit, grid: tuple[int, int], progress: bool) -> torch.Tensor:
    return pseudo_masks(teacher, train.images, train.labels, grid=grid, percentile=cfg.train.pseudo_percentile,
                        negatives=cfg.train.negative_pseudo, target=cfg.train.pseudo_target,
                        precision=cfg.train.precision, progress=progress)


def _ddt(cfg: RunConfig, teacher, train: DecodedSplit, grid: tuple[int, int], progress: bool) -> torch.Tensor:
    return ddt_pseudo_masks(teacher, train.images, train.labels, grid=grid, negatives=cfg.train.negative_pseudo,
                            precision=cfg.train.precision, progress=progress)


def _refined(cfg: RunConfig, teacher, train: DecodedSplit, grid: tuple[int, int], progress: bool) -> torch.Tensor:
    return stage2_labels(cfg, train, progress=progress)


def _cam_origin(cfg: RunConfig) -> tuple[str | None, str]:
    """Binary CAM masks: the percentile they are cut at (the default 95 keeps the plain name)."""
    if cfg.train.pseudo_target != "binary":
        return None, ""
    pct = cfg.train.pseudo_percentile
    return f"p{pct:g}", "" if pct == DEFAULT_PSEUDO_PERCENTILE else f"_p{pct:g}"


def _model_file_origin(cfg: RunConfig) -> tuple[str | None, str]:
    """Stage 2: the model file that made the labels (its sha256) and the labelling code's `LABELS_VERSION`."""
    if not cfg.model.init_from:
        return None, ""
    digest = file_digest(cfg.model.init_from)
    return f"{digest}:{LABELS_VERSION}", f"_{digest[:12]}_{LABELS_VERSION}"


SOURCES: dict[str, PseudoSource] = {
    "cam": PseudoSource(needs_teacher=True, make=_cam, origin=_cam_origin),
    "ddt": PseudoSource(needs_teacher=True, make=_ddt, origin=lambda cfg: (None, "")),
    "refined": PseudoSource(needs_teacher=False, make=_refined, origin=_model_file_origin),
}


@dataclass(frozen=True)
class LabelPlan:
    """What a student learns from, decided once from the config and the built student.

    Attributes:
        source: 'cam', 'ddt', 'refined' (a `SOURCES` key), or None (image labels only).
        needs_teacher: a CAM teacher is trained first (also for image labels only: the paper's pipeline).
        grid: (S, S): every kind is made at the patch size; the training step augments masks with
            their images at pixel level and only then pools them onto the student's cells.
        make, origin, suffix: the source's maker, what else decides the masks, their cache-name suffix.
    """

    source: str | None
    needs_teacher: bool
    grid: tuple[int, int]
    make: Maker | None = None
    origin: str | None = None
    suffix: str = ""


def label_plan(cfg: RunConfig, student: torch.nn.Module) -> LabelPlan:
    """The `LabelPlan` of a run whose student is `student`."""
    grid = (cfg.data.image_size, cfg.data.image_size)
    if not (student.uses_pseudo_masks and cfg.train.lambda_l1 > 0):
        return LabelPlan(source=None, needs_teacher=True, grid=grid)
    entry = SOURCES[student.pseudo_source]
    origin, suffix = entry.origin(cfg)
    return LabelPlan(source=student.pseudo_source, needs_teacher=entry.needs_teacher, grid=grid, make=entry.make,
                     origin=origin, suffix=suffix)
