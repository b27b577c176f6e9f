"""Typed run configuration, presets, and validated YAML round trips.

Every run saves its `RunConfig` as `config.yaml`, so any number can be traced back to it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crackloc.errors import CracklocError
from crackloc.io import write_text

DEFAULT_AHR_PERCENTILE = 50.0  # AHR cut at inference (training uses 90): chosen by dev PxAP, docs/localization.md


@dataclass
class ModelConfig:
    """A localization model, built through the registry by `name`."""

    name: str = "crackloc"  # registry key: crackloc (proposed), resnet18_cam (teacher), ...
    backbone: str = "resnet18"  # resnet18 | lite0
    pretrained: str = "auto"  # auto (cached torchvision/timm file if any) | none | PATH
    scales: list[str] | None = None  # backbone stages fused by MS-RFE; None = backbone default
    output_stride: int = 32  # 8 | 16 | 32: stride of the deepest backbone stage (16 = DESIGN's literal reading)
    fusion_stride: int = 16  # MS-RFE fuses on this grid: 14×14 at 224 px (layer4 upsampled, layer2 pooled)
    fusion: str = "attention"  # none (deepest scale only) | concat | attention (SE)
    fused_channels: int = 512
    se_reduction: int = 16
    ahr: bool = True  # spatial attention + percentile threshold
    ahr_percentile: float = 90.0
    heatmap_norm: str = "max"  # max (per-image max → 1, as the paper) | sigmoid (absolute)


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
    weight_decay: float = 1e-5
    patience: int = 5  # early stopping on validation AUROC
    lambda_l1: float = 0.5  # weight of L1(heatmap, teacher pseudo mask)
    pseudo_percentile: float = 95.0  # teacher CAM threshold for pseudo masks
    negative_pseudo: str = "zeros"  # zeros | cam (pseudo masks of crack-free images)
    seed: int = 0
    precision: str = "bf16"  # bf16 (autocast) | 32
    channels_last: bool = True
    augment: bool = True  # random flips and 90° rotations
    num_workers: int = 0
    accelerator: str = "auto"


@dataclass
class RunConfig:
    """Everything a `crackloc train` run needs."""

    preset: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: ModelConfig = field(
        default_factory=lambda: ModelConfig(name="resnet18_cam", output_stride=32, fusion="none", ahr=False)
    )
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "backbone": ("resnet18", "lite0"),
    "fusion": ("none", "concat", "attention"),
    "heatmap_norm": ("max", "sigmoid"),
    "negative_pseudo": ("zeros", "cam"),
    "precision": ("bf16", "32"),
    "preset": ("paper", "quick", "tiny"),
}
RANGES: dict[str, tuple[float, float]] = {
    "output_stride": (8, 32), "fusion_stride": (4, 32), "ahr_percentile": (0, 100), "pseudo_percentile": (0, 100),
    "lr": (0, 1), "weight_decay": (0, 1), "lambda_l1": (0, 100), "batch_size": (1, 4096),
    "epochs": (0, 10_000), "teacher_epochs": (0, 10_000), "patience": (1, 10_000),
    "image_size": (32, 4096), "se_reduction": (1, 512), "fused_channels": (1, 8192),
}


def preset(name: str, **overrides: Any) -> RunConfig:
    """The `paper` preset (as published) or `quick` (2-core CPU, ≤ 20 min on the 16k subset).

    `tiny` is for tests and the bundled demo sample (seconds to minutes).
    """
    cfg = RunConfig(preset=name)
    if name == "quick":
        cfg.train = TrainConfig(teacher_epochs=2, epochs=3, batch_size=32, lr=5e-4, patience=2)
        cfg.data = DataConfig(max_train=3000, max_val=800)
    elif name == "tiny":
        cfg.train = TrainConfig(teacher_epochs=3, epochs=4, batch_size=16, lr=1e-3, patience=4)
        cfg.data = DataConfig(image_size=112)
    elif name != "paper":
        raise CracklocError(f"unknown preset {name!r} (choose paper, quick or tiny)")
    return apply_overrides(cfg, overrides)


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
        if key in CHOICES and value not in CHOICES[key]:
            raise CracklocError(f"config: {full} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        if key in RANGES and value is not None and not RANGES[key][0] <= value <= RANGES[key][1]:
            lo, hi = RANGES[key]
            raise CracklocError(f"config: {full}={value!r} is outside [{lo}, {hi}]")
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
