"""The crackloc model file: config + state dict, saved with torch.save, read with weights_only=True.

Lightning's own `.ckpt` files (used only to resume training) are never loaded for inference.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crackloc.config import ModelConfig, from_dict
from crackloc.errors import CracklocError
from crackloc.io import save_torch
from crackloc.models.registry import build_model

FORMAT = "crackloc-model-v1"


def save_model(path: str | Path, model: nn.Module, cfg: ModelConfig, *, half: bool = False,
               **meta: Any) -> Path:
    """Write `{format, config, state_dict, meta}`; `half` stores floating tensors as fp16."""
    sd = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "config": dataclasses.asdict(cfg), "state_dict": sd, "meta": meta}
    return save_torch(path, payload)


def read_model_file(path: str | Path) -> dict:
    """Load a model file safely (no code execution); raises CracklocError for anything else.

    `torch.load(weights_only=True)` unpickles only tensors and plain containers, so a file
    carrying any other object is refused before that object could run code.
    """
    path = Path(path)
    if not path.is_file():
        raise CracklocError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CracklocError(f"{path}: refused: the file holds objects other than tensors and plain "
                            f"data{what}, which could run code when loaded") from None
    except Exception as exc:  # zip/EOF/format errors
        raise CracklocError(f"{path}: not a readable checkpoint, truncated or not a torch file "
                            f"({type(exc).__name__})") from None
    if isinstance(payload, dict) and "pytorch-lightning_version" in payload:
        raise CracklocError(f"{path}: a Lightning training checkpoint (only for `crackloc train "
                            "--resume`), not a model file: pass RUN/model.pt")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CracklocError(f"{path}: not a crackloc model file (expected format {FORMAT})")
    _check_payload(path, payload)
    return payload


def _check_payload(path: Path, payload: dict) -> None:
    """The parts `load_model` reads must have the right types (a crafted file may lie)."""
    sd, cfg, meta = payload.get("state_dict"), payload.get("config"), payload.get("meta", {})
    if not isinstance(cfg, dict) or not isinstance(meta, dict):
        raise CracklocError(f"{path}: damaged model file (config/meta are not mappings)")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CracklocError(f"{path}: damaged model file (state_dict is not a mapping of tensors)")


def load_model(path: str | Path, *, device: str | torch.device = "cpu",
               overrides: dict[str, Any] | None = None) -> tuple[nn.Module, dict]:
    """Build the model a file describes and load its weights: → (model in eval mode, payload).

    `overrides` sets model-config fields before the model is built (e.g. the inference AHR
    cut `{"ahr_percentile": 50.0}`); a field is set only where the model uses it
    (`ahr_percentile` only for configs with `ahr: true`). `payload["model_config"]` is the
    config the model was built from.
    """
    payload = read_model_file(path)
    try:
        saved = {**payload["config"], "pretrained": "none"}
        wanted = {k: v for k, v in (overrides or {}).items() if k != "ahr_percentile" or saved.get("ahr", True)}
        cfg = from_dict(ModelConfig, {**saved, **wanted})
        model = build_model(cfg)
    except CracklocError as exc:
        raise CracklocError(f"{path}: bad model config ({exc})") from None
    sd = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise CracklocError(f"{path}: weights do not fit the {cfg.name} model "
                            f"({str(exc).splitlines()[0]})") from None
    payload["model_config"] = cfg
    return model.to(device).eval(), payload
