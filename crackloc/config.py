"""Typed configs (run, model, data, training, inference), presets, and validated YAML round trips.

Every run saves its `RunConfig` as `config.yaml`, so any number can be traced back to it.
Allowed values live on the fields themselves: a `Literal[...]` type lists the choices and
`RANGES` gives the closed numeric range of a field; `from_dict` checks both, and the CLI
builds its `choices=` lists and option checks from them (`choices_of`, `check_value`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from crackloc.errors import CracklocError
from crackloc.io import write_text

BackboneName = Literal["resnet18", "lite0"]
FusionMode = Literal["none", "concat", "attention"]
HeatmapNorm = Literal["max", "sigmoid"]
NegativePseudo = Literal["zeros", "cam"]
L1Map = Literal["refined", "uncut"]
PseudoTarget = Literal["binary", "soft"]
Precision = Literal["auto", "bf16", "32"]
Backend = Literal["torch", "onnx"]
Strategy = Literal["auto", "ddp", "ddp_spawn"]  # Lightning strategies a run may use (docs/scale.md)
PresetName = Literal["paper", "quick", "tiny"]
SelectBy = Literal["val_auroc", "val_loss", "last"]
LrSchedule = Literal["constant", "cosine"]


@dataclass
class ModelConfig:
    """A localization model, built through the registry by `name`."""

    name: str = "crackloc"  # registry key: crackloc (proposed), resnet18_cam (teacher), ...
    backbone: BackboneName = "resnet18"
    pretrained: str = "auto"  # auto (cached torchvision/timm file if any) | none | PATH
    scales: list[str] | None = None  # backbone stages fused by MS-RFE; None = backbone default
    output_stride: int = 32  # 8 | 16 | 32: stride of the deepest backbone stage (16 = DESIGN's literal reading)
    fusion_stride: int = 16  # MS-RFE fuses on this grid: 14×14 at 224 px (layer4 upsampled, layer2 pooled)
    fusion: FusionMode = "attention"  # none (deepest scale only) | concat | attention (SE)
    fused_channels: int = 512
    se_reduction: int = 16
    ahr: bool = True  # spatial attention + percentile threshold
    ahr_percentile: float = 90.0
    heatmap_norm: HeatmapNorm = "max"  # max (per-image max → 1, as the paper) | sigmoid (absolute)
    # Which map the L1 term sees in training: the AHR output after its percentile cut (the paper:
    # cells below the cut get no gradient) or the uncut normalised CAM (the fixed student).
    l1_map: L1Map = "refined"
    # Train with the L1 term against pseudo masks; None = the registered model's own default
    # (True for crackloc and psol, False for the CAM baselines). The ablation rows keep True.
    uses_pseudo_masks: bool | None = None
    crack_width: float = 5.0  # expected crack width, px at the model's input (training-free filters' sizes)
    init_from: str = ""  # stage 2: the stage-1 model file (encoder and classifier init; pseudo-label regions)


@dataclass
class DataConfig:
    """Where images come from and how many of each split a preset uses."""

    data: str = ""  # folder with Positive/ and Negative/ (or the manifest's root)
    manifest: str = ""  # split manifest CSV; made with `crackloc split` if empty
    image_size: int = 224
    max_train: int | None = None  # stratified subsample of each split (None = all)
    max_val: int | None = None
    max_test: int | None = None


@dataclass
class TrainConfig:
    """Optimisation for teacher and student (paper §IV-B)."""

    teacher_epochs: int = 30
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-4
    lr_schedule: LrSchedule = "constant"  # constant (paper) | cosine: decays to 0 over the epochs, per step
    weight_decay: float = 1e-5
    patience: int = 5  # early stopping on the selection metric
    # Which epoch's weights are kept: best validation AUROC (the paper; it saturates at 1.0 on Özgenel
    # after an epoch or two), lowest validation loss, or the last epoch (stage 2: pixel quality is not
    # in the image-level validation metrics). Early stopping follows the same metric (none for last).
    select_by: SelectBy = "val_auroc"
    lambda_l1: float = 0.5  # weight of L1(heatmap, teacher pseudo mask)
    pseudo_percentile: float = 95.0  # teacher CAM threshold for pseudo masks
    # binary: the teacher CAM cut at pseudo_percentile (the paper) | soft: the CAM itself, ReLU'd
    # and divided by its per-image maximum (the fixed student)
    pseudo_target: PseudoTarget = "binary"
    negative_pseudo: NegativePseudo = "zeros"  # pseudo masks of crack-free images
    seed: int = 0
    # auto: bf16 autocast (training, teacher CAMs, DDT) where the device runs bf16 natively, else fp32 | bf16 | 32
    precision: Precision = "auto"
    channels_last: bool = True
    augment: bool = True  # random flips and 90° rotations
    # stage 2: half the batches are shrunk by a random factor in [zoom_out, 1] and mirrored back to
    # the patch size, so the decoder also sees cracks thinner than the training set's (1.0: off)
    zoom_out: float = 1.0
    # stage 2: share of batches where each patch becomes a k×k mosaic of shrunk patches (k drawn
    # from 2..mosaic_max_grid), so 10–30 px training cracks are also seen 2.5–15 px wide; 0: off
    mosaic: float = 0.0
    mosaic_max_grid: int = 4
    # stage 2: share of crack-free patches that get a straight light/dark step (a hard negative:
    # joints, shadow edges, seams are edges, not cracks); 0: off
    step_negatives: float = 0.0
    # stage 2: share of crack-free patches that get a random crack look-alike (formwork seam, joint,
    # step, shadow edge, stain, bug holes, spall: `crackloc.data.confusers`), all background; 0: off
    confusers: float = 0.0
    confusers_on_cracks: bool = False  # also draw them on crack patches (their pixels labelled background)
    num_workers: int = 0
    accelerator: str = "auto"
    # Data-parallel training (docs/scale.md): batch_size is the global batch, split over devices x nodes
    devices: int = 1  # processes (devices) per node
    num_nodes: int = 1
    strategy: Strategy = "auto"  # ddp: every process runs the pipeline; ddp_spawn: each fit spawns workers


@dataclass
class RunConfig:
    """Everything a `crackloc train` run needs."""

    preset: PresetName = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: ModelConfig = field(
        default_factory=lambda: ModelConfig(name="resnet18_cam", output_stride=32, fusion="none", ahr=False,
                                            uses_pseudo_masks=False)
    )
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class InferenceConfig:
    """How a model file is run on images of any size: one default per field, used by every caller.

    `predict`, `evaluate-localization`, the experiment runner, the figures and the benchmarks
    all build their `Predictor` from one of these, so the same image and settings give the same
    map everywhere. Defaults were chosen on CrackForest's dev images (docs/localization.md).
    """

    tile: int = 224  # window side in model pixels
    overlap: float = 0.25  # fraction of a window shared with its neighbour
    scale: float = 1.0  # resize factor applied to the photo before tiling
    auto_scale: bool = False  # choose the scale per photo from its estimated crack width (overrides scale)
    gate: bool = True  # weight each window's map by its crack probability
    # average the maps of this many turned/mirrored copies of the photo, each turned back
    # (`crackloc.inference.predictor.VIEWS`): 2 = + the photo turned 180°, which cancels a learned
    # map shift (stage 1 draws lines 3-8 px down-left); 4 = + both mirrors; 8 = + the 4 transposes.
    # N x the model time; decisions come from the first view only
    views: int = 1
    scale_spread: float = 1.0  # also map at scale / spread and scale x spread and average all three
    # the map onto the photo's own dark-line pixels: map^(1 - g) * (dark-line evidence)^g, the crack
    # mask (map >= 0.5) kept exactly (`crackloc.inference.guide`); 0 = the model's map as it is.
    # 0.9 was chosen on CrackForest's dev images (docs/localization.md)
    line_guide: float = 0.9
    ahr_percentile: float | None = 50.0  # AHR cut at inference (None = as trained, 90)
    # auto: bf16 autocast + channels_last where the device runs bf16 natively, else fp32 | bf16 | 32
    precision: Precision = "auto"
    backend: Backend = "torch"  # torch or ONNX Runtime
    batch_size: int = 16  # windows per forward pass (bounds memory)
    compile: bool = False  # torch.compile the model (torch backend)
    device: str = "cpu"


DEFAULT_AHR_PERCENTILE = InferenceConfig.ahr_percentile  # training uses ModelConfig.ahr_percentile (90)

# Closed ranges [lo, hi] of numeric fields, by field name (all config classes).
RANGES: dict[str, tuple[float, float]] = {
    "output_stride": (8, 32), "fusion_stride": (4, 32), "ahr_percentile": (0, 99.9),
    "pseudo_percentile": (0, 100), "lr": (1e-8, 1), "weight_decay": (0, 1), "lambda_l1": (0, 100),
    "batch_size": (1, 4096), "epochs": (0, 10_000), "teacher_epochs": (0, 10_000), "patience": (1, 10_000),
    "image_size": (32, 4096), "se_reduction": (1, 512), "fused_channels": (1, 8192),
    "max_train": (1, 10**8), "max_val": (1, 10**8), "max_test": (1, 10**8), "seed": (0, 2**32 - 1),
    "num_workers": (0, 256), "tile": (32, 4096), "overlap": (0, 0.95), "scale": (0.01, 64),
    "views": (1, 8), "scale_spread": (1, 4), "line_guide": (0, 0.95),
    "devices": (1, 1024), "num_nodes": (1, 10_000),
    # command-line options that are not config fields (same checks, `crackloc.cli.registry.checked`)
    "loc_scale": (0.01, 64), "max_distance": (0, 16), "mm_per_px": (1e-6, 1e4), "max_pixels": (1, 10**10),
    "dev_fraction": (0.01, 0.99), "tolerance": (0, 32), "max_images": (2, 10**7), "opset": (1, 100),
    "images": (1, 64), "crack_width": (0.5, 200), "zoom_out": (0.5, 1), "mosaic": (0, 1), "mosaic_max_grid": (2, 8), "step_negatives": (0, 1), "confusers": (0, 1),
    "workers": (1, 100_000), "cpus_per_worker": (0.01, 1024), "gpus_per_worker": (0, 64),
}
UNITS: dict[str, str] = {"tile": "px", "scale": "x", "scale_spread": "x", "loc_scale": "x", "overlap": "of a window",
                         "ahr_percentile": "%", "pseudo_percentile": "%", "image_size": "px", "tolerance": "px",
                         "mm_per_px": "mm per px", "max_pixels": "pixels", "max_distance": "bits of the 64-bit hash",
                         "dev_fraction": "of the images", "max_images": "images", "images": "images",
                         "epochs": "epochs", "teacher_epochs": "epochs", "batch_size": "images", "crack_width": "px"}

# The presets, defined once. `quick` fits a 2-core CPU; `tiny` is for tests and the demo.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},  # as published: Adam 1e-4, wd 1e-5, batch 8, ≤ 30 epochs, patience 5
    "quick": {"train.teacher_epochs": 2, "train.epochs": 3, "train.batch_size": 32, "train.lr": 5e-4,
              "train.patience": 2, "data.max_train": 3000, "data.max_val": 800},
    "tiny": {"train.teacher_epochs": 3, "train.epochs": 4, "train.batch_size": 16, "train.lr": 1e-3,
             "train.patience": 4, "data.image_size": 112},
}
# Per-run budget of `crackloc experiment` (33 runs): overrides on top of the preset of that name.
EXPERIMENT_BUDGET: dict[str, dict[str, Any]] = {
    "quick": {"data.max_train": 2000, "data.max_val": 500, "data.max_test": 1000, "train.epochs": 2},
}


def choices_of(cls: type, name: str) -> tuple[Any, ...] | None:
    """The values a `Literal` field allows (None if the field is not a Literal)."""
    hint = typing.get_type_hints(cls)[name]
    for part in (hint, *typing.get_args(hint)):
        if typing.get_origin(part) is Literal:
            return typing.get_args(part)
    return None


def check_value(key: str, value: Any, *, option: str | None = None) -> Any:
    """Refuse a non-finite or out-of-range number for field `key`: → value (CracklocError otherwise).

    `option` names the flag in the message (e.g. `--scale`); default the config key.
    """
    name = option or key
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(value, float) and not math.isfinite(value):
        raise CracklocError(f"{name} must be a finite number, got {value!r}")
    if leaf in RANGES and isinstance(value, int | float) and not isinstance(value, bool):
        lo, hi = RANGES[leaf]
        if not lo <= value <= hi:
            unit = f" {UNITS[leaf]}" if leaf in UNITS else ""
            raise CracklocError(f"{name}={value!r} is outside [{lo:g}, {hi:g}]{unit}")
    return value


def preset(name: str, **overrides: Any) -> RunConfig:
    """The `paper` preset (as published), `quick` (2-core CPU) or `tiny` (tests, the demo), plus overrides."""
    if name not in PRESETS:
        raise CracklocError(f"unknown preset {name!r} (choose {', '.join(PRESETS)})")
    return apply_overrides(RunConfig(preset=name), {**PRESETS[name], **overrides})


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Set dotted keys (`train.lr`, `model.backbone`, ...) and re-validate; None values are skipped."""
    d = asdict(cfg)
    for key, value in overrides.items():
        if value is None:
            continue
        node = d
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise CracklocError(f"config: unknown key {key!r}")
        node[leaf] = value
    return from_dict(RunConfig, d)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        value = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        if value not in allowed:
            raise CracklocError(f"config: {key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        return _check_type(key, value, next(a for a in args if a is not type(None)))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise CracklocError(f"config: {key} must be a list, got {value!r}")
        return [_check_type(key, v, typing.get_args(hint)[0]) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise CracklocError(f"config: {key} must be {hint.__name__}, got {value!r}")
    return value


def from_dict(cls: type, d: dict[str, Any], prefix: str = "") -> Any:
    """Build a config dataclass from a dict, naming the key of any unknown/wrong/out-of-range value."""
    if not isinstance(d, dict):
        raise CracklocError(f"config: {prefix or 'root'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in d:
        if key not in names:
            raise CracklocError(f"config: unknown key {prefix + key!r}")
    kwargs = {}
    for key, value in d.items():
        full, hint = prefix + key, hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, full + ".")
            continue
        value = _check_type(full, value, hint)
        if value is not None:
            check_value(full, value, option=f"config: {full}")
        kwargs[key] = value
    return cls(**kwargs)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write a config dataclass as YAML (atomically)."""
    return write_text(path, yaml.safe_dump(asdict(cfg), sort_keys=False))


def load_config(path: str | Path, cls: type = RunConfig) -> Any:
    """Read and validate a YAML config."""
    path = Path(path)
    if not path.is_file():
        raise CracklocError(f"{path}: no such config file")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CracklocError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return from_dict(cls, d)
