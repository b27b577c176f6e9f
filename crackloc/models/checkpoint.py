"""The crackloc model file: config + state dict, saved with torch.save, read with weights_only=True.

Lightning's own `.ckpt` files (used only to resume training) are never loaded for inference.
"""

from __future__ import annotations

import dataclasses
import math
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
    _sniff(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if not found:
            raise CracklocError(f"{path}: not a readable checkpoint, damaged or not a torch file") from None
        raise CracklocError(f"{path}: refused: the file holds objects other than tensors and plain "
                            f"data ({found.group(1)}), which could run code when loaded") from None
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


TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # a torch zip archive, or a legacy pickle stream


def _sniff(path: Path) -> None:
    """Name what a file is when it is plainly not a torch file (ONNX, text, empty) before unpickling."""
    with path.open("rb") as f:
        head = f.read(512)
    if not head:
        raise CracklocError(f"{path}: empty file, not a crackloc model file")
    if head.startswith(TORCH_MAGIC):
        return
    if _is_onnx(path):
        raise CracklocError(f"{path}: an ONNX model, not a crackloc model file: --checkpoint takes the .pt file "
                            "(`crackloc export` makes ONNX from it; `--backend onnx` runs it)")
    try:
        head.decode("utf-8")
        kind = "a text file"
    except UnicodeDecodeError:
        kind = "an unknown binary format"
    raise CracklocError(f"{path}: {kind}, not a crackloc model file (expected a .pt file made by "
                        "`crackloc train`)")


def _is_onnx(path: Path) -> bool:
    """True when the file parses as an ONNX model with a graph (protobuf)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not protobuf, or not a ModelProto
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def _check_payload(path: Path, payload: dict) -> None:
    """The parts `load_model` reads must have the right types and finite values (a crafted file may lie)."""
    sd, cfg, meta = payload.get("state_dict"), payload.get("config"), payload.get("meta", {})
    if not isinstance(cfg, dict) or not isinstance(meta, dict):
        raise CracklocError(f"{path}: damaged model file (config/meta are not mappings)")
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           for k, v in sd.items()):
        raise CracklocError(f"{path}: damaged model file (state_dict is not a mapping of tensors)")
    threshold = meta.get("val_threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold) \
            or not 0.0 <= threshold <= 1.0:
        raise CracklocError(f"{path}: damaged model file (meta.val_threshold must be a number in [0, 1], "
                            f"got {threshold!r})")
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CracklocError(f"{path}: damaged model file ({len(bad)} weight tensors hold NaN or infinite "
                            f"values, e.g. {bad[0]})")


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
        saved = {**payload["config"], "pretrained": "none", "init_from": ""}  # the weights are in the file
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
