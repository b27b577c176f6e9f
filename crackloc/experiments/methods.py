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
STAGE2 = "crackseg"  # stage 2: pixel decoder from the same seed's proposed run (its model.pt is `init_from`)
FLOORS = ("darkness", "blackhat", "ridge", "blackhat_ridge_shape")  # training-free rows: nothing to train
EXTENDED = (*ALL_METHODS, STAGE2, *FLOORS)  # 'all+' : the paper's methods, stage 2 and the floors
# How each kind of map is tiled on the human-mask images, relative to the experiment's --loc-scale (chosen
# for the paper's stride-16 maps): stage 2's stride-4 decoder resolves cracks at half that upscaling, and
# the floors run on the image itself (their `crack_width` sets their size). CrackForest dev images chose
# 6 (stage 1), 3 (stage 2) and 1 (floors, gate off): benchmarks/localization_table, its table.json.
LOC_SCALE_FACTOR = {STAGE2: 0.5, **{f: None for f in FLOORS}}  # None: scale 1, whatever --loc-scale
LOC_GATE = {f: False for f in FLOORS}  # a floor's "probability" is its strongest pixel: no gate
STAGE2_TRAIN = {"model.pretrained": "none", "train.select_by": "last", "train.lr_schedule": "cosine"}


def is_ablation(method: str) -> bool:
    """True for a Table II row (`ablation:<row>`)."""
    return method.startswith(ABLATION_PREFIX)


def parse_methods(text: str) -> list[str]:
    """'all', 'all+' (also stage 2 and the floors) or a comma list of registry names and `ablation:<row>`.

    Returns validated method names; stage 2 always comes after the proposed model it starts from.
    """
    if text.strip() in ("all", "all+"):
        return list(ALL_METHODS if text.strip() == "all" else EXTENDED)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    valid = set(available_models()) | {f"{ABLATION_PREFIX}{v}" for v in ABLATION_ROWS}
    unknown = [m for m in methods if m not in valid]
    if unknown or not methods:
        raise CracklocError(f"unknown method(s) {unknown or text!r}; choose 'all', 'all+' or from {', '.join(sorted(valid))}")
    methods = list(dict.fromkeys(methods))
    if STAGE2 in methods and PROPOSED not in methods[:methods.index(STAGE2)]:  # stage 2 starts from the
        methods = [m for m in methods if m != PROPOSED]                        # proposed run of its seed
        methods.insert(methods.index(STAGE2), PROPOSED)
    return methods


def is_training_free(method: str) -> bool:
    """True for the floors: image filters with nothing to train."""
    return method in FLOORS


def localization_settings(method: str, *, scale: float, gate: bool) -> tuple[float, bool]:
    """(scale, gate) a method's maps are tiled with, from the experiment's stage-1 `scale` and `gate`."""
    factor = LOC_SCALE_FACTOR.get(method, 1.0)
    return (1.0 if factor is None else scale * factor), LOC_GATE.get(method, gate)


def method_model_config(base: ModelConfig, method: str) -> ModelConfig:
    """The model config a method trains, from the proposed model's config of the preset."""
    if is_training_free(method):
        return ModelConfig(name=method, pretrained="none", uses_pseudo_masks=False)
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
