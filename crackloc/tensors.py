"""Tensor helpers every layer uses: image batches to model input, autocast, batched model runs.

The bottom of the package: it imports nothing from crackloc, so data, models, training,
inference and evaluation can all use it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import sys
from collections.abc import Callable

import torch
from tqdm import tqdm

MASK_LEVEL = 0.5  # a crack mask is map >= this: predict's masks, geometry, the viewer's default, the line guide


def unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 in [0,255] → float32 in [0,1]; a float tensor (already in [0,1]) → float32 as it is."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def to_input(images: torch.Tensor, *, channels_last: bool) -> torch.Tensor:
    """uint8 [B,3,H,W] → float [B,3,H,W] in [0,1] (channels_last if asked)."""
    x = images.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# oneDNN CPU ISA caps (ONEDNN_MAX_CPU_ISA) under which it has no native bf16 kernels
_ISA_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether `device` runs bf16 math natively (fast), rather than emulating it (10-30x slower on CPU).

    CUDA: `torch.cuda.is_bf16_supported()`. CPU: oneDNN's bf16 check, unless `ONEDNN_MAX_CPU_ISA`
    caps oneDNN below its bf16 instructions (as when imitating an AVX2-only CPU).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type != "cpu":
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa in _ISA_WITHOUT_BF16:
        return False
    return mkldnn_bf16()


@functools.cache
def mkldnn_bf16() -> bool:
    """oneDNN's bf16 check (it honours ISA caps) and, on x86, the bf16 instructions themselves:
    oneDNN also says yes on AVX-512 CPUs without them (Skylake to Ice Lake), where bf16 is emulated."""
    ok = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if ok and platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        ok = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return ok


def resolve_precision(precision: str, device: torch.device | str = "cpu", *, warn: bool = True) -> str:
    """The precision that will run: 'auto' → 'bf16' where `device` has native bf16, else '32'.

    An explicit 'bf16' on a device without native bf16 is kept, with a one-line warning that it
    will be slow (when `warn`).
    """
    if precision == "auto":
        return "bf16" if native_bf16(device) else "32"
    if precision == "bf16" and warn and not native_bf16(device):
        warn_once(f"crackloc: warning: --precision bf16 on a {torch.device(device).type.upper()} without native "
                   "bf16 is emulated, 10-30x slower than fp32; use --precision auto or 32")
    return precision


@functools.cache
def warn_once(message: str) -> None:
    """Print `message` to stderr once per process (one line, not a Python warning with its source line)."""
    print(message, file=sys.stderr)


def cpu_capability() -> str:
    """One line for benchmark output: the CPU's vector capability and whether it has native bf16."""
    cap = torch.backends.cpu.get_cpu_capability()
    return f"CPU capability {cap}, native bf16 {'yes' if native_bf16('cpu') else 'no'}"


def autocast_for(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when `precision` resolves to 'bf16' (CPU or CUDA), else a no-op."""
    device = torch.device(device)
    if resolve_precision(precision, device, warn=False) == "bf16":
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
                    precision: str = "auto", channels_last: bool = True, with_heatmaps: bool = False,
                    progress: bool = False, desc: str = "predicting"
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run a model over uint8 images [N,3,S,S]: → (probabilities [N], heatmaps [N,1,S,S] or None).

    `model` follows the `(logits, heatmap)` contract: a torch module or an ONNX Runtime
    predictor (then `channels_last` and `precision` do not apply).
    """
    is_torch = isinstance(model, torch.nn.Module)
    device = model_device(model)
    precision = resolve_precision(precision, device, warn=False) if is_torch else "32"
    channels_last = channels_last and is_torch and precision == "bf16"  # as `Predictor` runs it
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    probs, heats = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        x = to_input(images[start:start + batch_size].to(device), channels_last=channels_last)
        with autocast_for(device, precision):
            logits, heatmap = model(x)
        probs.append(torch.sigmoid(logits.float()).cpu())
        if with_heatmaps:
            heats.append(heatmap.float().cpu())
    return torch.cat(probs), (torch.cat(heats) if with_heatmaps else None)


MAP_ALIGNMENT = "cells-on-pixels-v2"  # in cache keys: pseudo masks and ONNX exports made before used the ½ rule


def _cell_weights(n_out: int, n_in: int, *, stride: float, phase: float) -> torch.Tensor:
    """Linear-interpolation matrix [n_out, n_in]: pixel p reads cell (p − phase·(stride−1)) / stride."""
    u = ((torch.arange(n_out, dtype=torch.float64) - phase * (stride - 1)) / stride).clamp(0, n_in - 1)  # [n_out]
    i0 = u.floor().long()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    t = u - i0
    rows = torch.arange(n_out)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m.index_put_((rows, i0), 1 - t, accumulate=True)
    m.index_put_((rows, i1), t, accumulate=True)
    return m


def upsample_cells(x: torch.Tensor, size: tuple[int, int], *, stride: float, phase: float = 0.0) -> torch.Tensor:
    """Bilinear upsampling of a cell map that keeps each cell over the pixels it describes.

    Cell i of a stride-s map describes the input around pixel s·i + phase·(s − 1): phase 0 for
    torchvision CNNs (every stride-2 conv or pool has k//2 padding, so output i sits on input 2i),
    ½ for patchify / 2×2-pool networks (ViT, VGG), 1 for TF-"same" padding (EfficientNet-TF).
    `F.interpolate(align_corners=False)` assumes ½, which shifts a phase-0 map by (s−1)/2 px
    down and right (7.5 px at stride 16). Beyond the first and last cell centres the edge value is
    kept. [B,C,h,w] → [B,C,*size].
    """
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    my = _cell_weights(size[0], h, stride=stride, phase=phase).to(x.device, dtype)  # [H,h]
    mx = _cell_weights(size[1], w, stride=stride, phase=phase).to(x.device, dtype)  # [W,w]
    with torch.autocast(x.device.type, enabled=False):  # as F.interpolate: full precision under bf16 autocast
        return my @ x.to(dtype) @ mx.T  # [B,C,H,W]


def nominal_stride(size: int, cells: int) -> int:
    """The power-of-two stride s of a map with `cells` cells over `size` px: ⌈size / s⌉ = cells.

    The smallest such s (a 40 px input has 2 cells at stride 32); where none fits exactly, the
    nearest power of two to size / cells.
    """
    for k in range(13):
        if -(-size // 2**k) == cells:
            return 2**k
    return 2 ** max(0, round(math.log2(size / cells)))
