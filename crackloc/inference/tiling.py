"""Tiled inference: a heatmap at full input resolution for images of any size.

The (optionally rescaled) image is cut into overlapping `tile`×`tile` windows, the last row and
column clamped to the border. Each window's heatmap is blended with a smooth separable Hann
weight that has a floor > 0 (so border pixels keep weight), and the stitched map is the
weighted mean of the windows covering each pixel. Tiles are streamed in batches into one
running numerator map; the denominator (weight-sum map) depends only on the grid.

Images smaller than a tile are padded (reflect, or replicate where a side is too short to
reflect) up to the tile size on the bottom/right, not resized: the model sees cracks at the
same pixel scale as in larger photos. The padded part of the map is cropped away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crackloc.tensors import unit_float

WEIGHT_FLOOR = 0.05  # min of the 1-D blend window; the 2-D weight is ≥ WEIGHT_FLOOR²
# A window whose grey levels spread less than this (standard deviation, of 1) is flat: a uniform,
# near-uniform or saturated area holds no crack evidence, whatever a model makes of it (a
# near-black 224² image once got probability 1.0). JPEG noise on plain paint is ~1/255; concrete
# texture 10-30/255, and a crack adds its own contrast.
FLAT_STD = 2.0 / 255


@dataclass
class TiledResult:
    """Output of `predict_tiled`.

    Attributes:
        heatmap: [H,W] float in [0,1] at the original input resolution (CPU).
        tile_probs: [n_tiles] crack probability sigmoid(logit) of each tile (CPU).
        tile_boxes: (y0, x0, y1, x1) of each tile in original image pixels, clipped to it.
        probability: image crack probability = max tile probability.
    """

    heatmap: torch.Tensor
    tile_probs: torch.Tensor
    tile_boxes: list[tuple[int, int, int, int]]
    probability: float


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Window starts along one axis; the last one clamped so the window ends at the border."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def tile_grid(h: int, w: int, *, tile: int, overlap: float) -> list[tuple[int, int]]:
    """Top-left corners (y0, x0) of sliding `tile`×`tile` windows over an h×w image.

    Args:
        h: Image height (≥ 1).
        w: Image width (≥ 1).
        tile: Window side in pixels (≥ 1).
        overlap: Fraction of a window shared with its neighbour, 0 ≤ overlap < 1; the stride
            is max(1, round(tile·(1 − overlap))).

    Returns:
        Row-major list of corners. A side shorter than `tile` gets one window at 0 (the image
        is then padded to the tile, see the module docstring).
    """
    if h < 1 or w < 1:
        raise ValueError(f"image size must be ≥ 1x1, got {h}x{w}")
    if tile < 1:
        raise ValueError(f"tile must be ≥ 1, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    stride = max(1, round(tile * (1.0 - overlap)))
    return [(y, x) for y in _starts(h, tile, stride) for x in _starts(w, tile, stride)]


def blend_weight(tile: int, *, floor: float = WEIGHT_FLOOR) -> torch.Tensor:
    """Separable Hann blend window with a floor: → [tile, tile] float in [floor², 1]."""
    i = torch.arange(tile, dtype=torch.float64)
    w1 = floor + (1.0 - floor) * torch.sin(math.pi * (i + 0.5) / tile) ** 2  # [tile]
    return torch.outer(w1, w1).float()  # [tile, tile]


def weight_sum_map(h: int, w: int, *, tile: int, overlap: float) -> torch.Tensor:
    """Sum of blend weights of all windows covering each pixel: → [max(h,tile), max(w,tile)].

    The map covers the padded image (each side at least `tile`); crop [:h, :w] for the image.
    """
    hp, wp = max(h, tile), max(w, tile)
    weight = blend_weight(tile)  # [tile, tile]
    total = torch.zeros(hp, wp)  # [Hp, Wp]
    for y, x in tile_grid(hp, wp, tile=tile, overlap=overlap):
        total[y : y + tile, x : x + tile] += weight
    return total


def check_coverage(weight_sum: torch.Tensor) -> None:
    """Raise RuntimeError if any pixel of a weight-sum map [H,W] has zero (or NaN) weight."""
    uncovered = int((~(weight_sum > 0)).sum())
    if uncovered:
        raise RuntimeError(f"tiling left {uncovered} of {weight_sum.numel()} pixels without weight")


def _pad_to_tile(image: torch.Tensor, tile: int) -> torch.Tensor:
    """Pad [3,H,W] on the bottom/right to at least tile×tile: → [3,max(H,tile),max(W,tile)]."""
    h, w = image.shape[-2:]
    pad_h, pad_w = max(tile - h, 0), max(tile - w, 0)
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    x = image.unsqueeze(0)  # [1,3,H,W]
    src_dtype = x.dtype
    x = F.pad(x.float(), (0, pad_w, 0, pad_h), mode=mode)  # [1,3,Hp,Wp]
    return x[0].to(src_dtype)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of [N,C,H,W] float to `size`."""
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _prepare(image: torch.Tensor, scale: float, device: torch.device) -> torch.Tensor:
    """Validate and rescale the input: [3,H,W] uint8 (or float in [0,1]) → [3,h,w] on device."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3,H,W], got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise ValueError(f"image must be uint8 (or float in [0,1]), got {image.dtype}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    image = image.to(device)
    if scale == 1.0:
        return image
    h, w = image.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = unit_float(image).unsqueeze(0)  # [1,3,H,W] in [0,1]
    x = _resize(x, size)[0].clamp(0.0, 1.0)  # [3,h,w]
    return (x * 255.0).round().to(torch.uint8) if image.dtype == torch.uint8 else x


def _tile_boxes(corners: list[tuple[int, int]], *, tile: int, scaled: tuple[int, int],
                original: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Window corners on the scaled image → (y0, x0, y1, x1) boxes in original pixels."""
    sy, sx = original[0] / scaled[0], original[1] / scaled[1]
    return [
        (round(y * sy), round(x * sx), min(original[0], round((y + tile) * sy)),
         min(original[1], round((x + tile) * sx)))
        for y, x in corners
    ]


@torch.inference_mode()
def _run_tiles(model: nn.Module, padded: torch.Tensor, corners: list[tuple[int, int]], *,
               tile: int, batch_size: int, gate: bool, amp_dtype: torch.dtype | None,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stream batches of tiles through the model: → (weighted heatmap sum [Hp,Wp], probs [n])."""
    device = padded.device
    weight = blend_weight(tile).to(device)  # [tile, tile]
    numerator = torch.zeros(padded.shape[-2:], device=device)  # [Hp, Wp]
    probs = []
    for start in range(0, len(corners), batch_size):
        chunk = corners[start : start + batch_size]
        batch = torch.stack([padded[:, y : y + tile, x : x + tile] for y, x in chunk])  # [b,3,t,t]
        batch = unit_float(batch)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16,
                            enabled=amp_dtype is not None):
            logits, heat = model(batch)  # [b], [b,1,t,t]
        if heat.shape != (len(chunk), 1, tile, tile):
            raise RuntimeError(f"model returned heatmap {tuple(heat.shape)} for {len(chunk)} tiles "
                               f"of {tile}x{tile}")
        flat = batch.mean(1).flatten(1).std(1) < FLAT_STD  # [b] no evidence: probability and map 0
        p = torch.sigmoid(logits.float().reshape(len(chunk))).masked_fill(flat, 0.0)  # [b]
        heat = heat.float()[:, 0].clamp(0.0, 1.0).masked_fill(flat.view(-1, 1, 1), 0.0)  # [b,t,t]
        if gate:
            heat = heat * p.view(-1, 1, 1)  # [b,t,t]
        for (y, x), h in zip(chunk, heat, strict=True):
            numerator[y : y + tile, x : x + tile] += h * weight  # [t,t]
        probs.append(p)
    return numerator, torch.cat(probs)


def predict_tiled(model: nn.Module, image: torch.Tensor, *, tile: int = 224,
                  overlap: float = 0.25, scale: float = 1.0, batch_size: int = 16,
                  gate: bool = False, device: str | torch.device = "cpu",
                  amp_dtype: torch.dtype | None = None,
                  channels_last: bool = False) -> TiledResult:
    """Heatmap of a whole image by blending overlapping tile predictions.

    Args:
        model: Follows the model contract (x [B,3,t,t] in [0,1] → logits [B], heatmap
            [B,1,t,t]); must already live on `device`. Run in eval mode, then restored.
        image: [3,H,W] uint8 (float in [0,1] also accepted).
        tile: Window side, in pixels of the rescaled image; the model input size.
        overlap: Overlap fraction of neighbouring windows, in [0, 1).
        scale: Resize factor applied before tiling (0.5: each window covers 2·tile photo px).
        batch_size: Tiles per forward pass; bounds memory.
        gate: Multiply each tile heatmap by its crack probability before blending.
        device: Where tiles are cut, run and stitched.
        amp_dtype: e.g. torch.bfloat16 to run the model under autocast; None = float32.
        channels_last: Feed tiles in channels-last memory format.

    Returns:
        TiledResult with the heatmap at the original H×W.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    device = torch.device(device)
    original = (int(image.shape[-2]), int(image.shape[-1]))
    scaled_img = _prepare(image, scale, device)  # [3,h,w]
    scaled = (int(scaled_img.shape[-2]), int(scaled_img.shape[-1]))
    padded = _pad_to_tile(scaled_img, tile)  # [3,Hp,Wp]
    corners = tile_grid(*padded.shape[-2:], tile=tile, overlap=overlap)
    denominator = weight_sum_map(*scaled, tile=tile, overlap=overlap).to(device)  # [Hp,Wp]
    check_coverage(denominator[: scaled[0], : scaled[1]])
    was_training = model.training
    model.eval()
    try:
        numerator, probs = _run_tiles(model, padded, corners, tile=tile, batch_size=batch_size,
                                      gate=gate, amp_dtype=amp_dtype, channels_last=channels_last)
    finally:
        model.train(was_training)
    stitched = (numerator / denominator)[: scaled[0], : scaled[1]]  # [h,w]
    heatmap = _resize(stitched[None, None], original)[0, 0].clamp(0.0, 1.0)  # [H,W]
    return TiledResult(
        heatmap=heatmap.cpu(),
        tile_probs=probs.cpu(),
        tile_boxes=_tile_boxes(corners, tile=tile, scaled=scaled, original=original),
        probability=float(probs.max()),
    )
