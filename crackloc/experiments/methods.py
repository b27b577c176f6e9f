"""The methods of the paper's experiments: names, order, folders, and the config each one trains.

The one place (with `crackloc.models.registry`) that knows method names: the runner, the
aggregation and the report ask this module, they never compare names themselves.

A method is a registry name (`crackloc`, the Table I baselines) or an ablation row of
Table II, written `ablation:<row>` (`crackloc.models.net.ABLATION_ROWS`). Every ablation row
is the proposed network with some parts switched off and keeps the proposed model's L1 term
against the teacher's pseudo masks (`uses_pseudo_masks: true`; the report says so).
"""

from __future__ import annotations

import dataclasses

from crackloc.config import ModelConfig
from crackloc.errors import CracklocError
from crackloc.models.net import ABLATION_ROWS, ablation_config
from crackloc.models.registry import available_models

PROPOSED = "crackloc"
BASELINES = ("cam_vgg16", "resnet18_cam", "wsol_crack", "psol", "ts_cam")  # Table I order
ABLATION_PREFIX = "ablation:"
FULL_MODEL_ROW = f"{ABLATION_PREFIX}full_attention"  # Table II's last row is the proposed model itself
ABLATIONS = tuple(f"{ABLATION_PREFIX}{v}" for v in ABLATION_ROWS if f"{ABLATION_PREFIX}{v}" != FULL_MODEL_ROW)
ALL_METHODS = (PROPOSED, *BASELINES, *ABLATIONS)
ARCHITECTURES = {"cam_vgg16": "vgg16", "ts_cam": "deit_tiny_patch16_224"}  # models that ignore model.backbone
ABLATION_USES_PSEUDO_MASKS = True  # stated in the report


def is_ablation(method: str) -> bool:
    """True for a Table II row (`ablation:<row>`)."""
    return method.startswith(ABLATION_PREFIX)


def parse_methods(text: str) -> list[str]:
    """'all' or a comma list of registry names and `ablation:<row>` → validated method names."""
    if text.strip() == "all":
        return list(ALL_METHODS)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    valid = set(available_models()) | {f"{ABLATION_PREFIX}{v}" for v in ABLATION_ROWS}
    unknown = [m for m in methods if m not in valid]
    if unknown or not methods:
        raise CracklocError(f"unknown method(s) {unknown or text!r}; choose 'all' or from {', '.join(sorted(valid))}")
    return list(dict.fromkeys(methods))


def method_model_config(base: ModelConfig, method: str) -> ModelConfig:
    """The model config a method trains, from the proposed model's config of the preset."""
    if is_ablation(method):
        row = ablation_config(base, method[len(ABLATION_PREFIX):])
        return dataclasses.replace(row, uses_pseudo_masks=ABLATION_USES_PSEUDO_MASKS)
    return dataclasses.replace(base, name=method)


def method_dir(method: str) -> str:
    """Folder name of a method ('ablation:ahr' → 'ablation-ahr')."""
    return method.replace(":", "-")


def method_from_dir(name: str) -> str:
    """Inverse of `method_dir`."""
    prefix = ABLATION_PREFIX.replace(":", "-")
    return name.replace(prefix, ABLATION_PREFIX, 1) if name.startswith(prefix) else name


def table_source(method: str, finished: set[str]) -> str:
    """Whose runs fill a Table II row: the full-model row is the proposed model's unless run apart."""
    return PROPOSED if method == FULL_MODEL_ROW and method not in finished else method
