"""Tensor helpers every layer uses: image batches to model input, autocast, batched model runs.

The bottom of the package: it imports nothing from crackloc, so data, models, training,
inference and evaluation can all use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from tqdm import tqdm


def to_input(images: torch.Tensor, *, channels_last: bool) -> torch.Tensor:
    """uint8 [B,3,H,W] → float [B,3,H,W] in [0,1] (channels_last if asked)."""
    x = images.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast_for(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when `precision` is 'bf16' (CPU or CUDA), else a no-op."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_device(model: Callable) -> torch.device:
    """Where a torch model's parameters live; CPU for parameter-less callables (ONNX Runtime)."""
    params = getattr(model, "parameters", None)
    if params is None:
        return torch.device("cpu")
    return next(iter(params()), torch.zeros(0)).device


@torch.inference_mode()
def predict_batches(model: Callable, images: torch.Tensor, *, batch_size: int = 64,
                    precision: str = "bf16", channels_last: bool = True, with_heatmaps: bool = False,
                    progress: bool = False, desc: str = "predicting"
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run a model over uint8 images [N,3,S,S]: → (probabilities [N], heatmaps [N,1,S,S] or None).

    `model` follows the `(logits, heatmap)` contract: a torch module or an ONNX Runtime
    predictor (then `channels_last` and `precision` do not apply).
    """
    is_torch = isinstance(model, torch.nn.Module)
    device = model_device(model)
    channels_last = channels_last and is_torch
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    probs, heats = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        x = to_input(images[start:start + batch_size].to(device), channels_last=channels_last)
        with autocast_for(device, precision if is_torch else "32"):
            logits, heatmap = model(x)
        probs.append(torch.sigmoid(logits.float()).cpu())
        if with_heatmaps:
            heats.append(heatmap.float().cpu())
    return torch.cat(probs), (torch.cat(heats) if with_heatmaps else None)
