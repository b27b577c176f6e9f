"""Stage-2 pseudo-labels: where stage 1 says ∩ what the image says, with an ignore band.

From image-level labels only. For each crack patch:

1. **Region** (stage 1): its heatmap ≥ `region_level`, dilated by one crack width, so the
   coarse 14×14 map only says *where*.
2. **Evidence** (the image): the multi-scale black-hat response (dark thin structure), with
   windows relative to the expected crack width of the training patches.
3. **Crack** = region ∩ evidence ≥ t, with t the Otsu threshold of the evidence inside the
   region; components spanning less than `min_length` crack widths are dropped (specks).
4. **Ignore** (label 255): region pixels with evidence between t/2 and t, a `band` px ring
   around the crack (edges are uncertain), and strong evidence outside the region.
5. Everything else is background (0); crack-free patches are all background.

The result is uint8 [N,1,S,S] in {0, 1, 255} at patch resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from crackloc.data.dataset import PIXEL_IGNORE as IGNORE
from crackloc.imageops import blackhat_response, dilate_square, grey
from crackloc.imageops.morphology import component_spans
from crackloc.imageops.threshold import otsu_threshold
from crackloc.tensors import autocast_for, to_input

LABELS_VERSION = "otsu-skimage"  # part of the labels' cache key: change it whenever the labels a model file makes change


@dataclass
class RefineConfig:
    """Levels of the refinement (chosen on synthetic cracks and dev images; see the module notes)."""

    region_level: float = 0.3  # stage-1 map level (maps are max-normalised per patch) that bounds the region
    crack_width: float = 12.0  # expected crack width in the training patches, px (Özgenel: 10–30 px)
    min_length: float = 2.0  # components shorter than this many crack widths are dropped
    band: int = 1  # px of ignore ring around every crack pixel (2 px taught synthetic 2.5 px cracks to come out too wide)


def _drop_short(crack: torch.Tensor, *, min_span: float) -> torch.Tensor:
    """Remove 8-connected components whose bounding-box diagonal is < min_span: bool [H,W]."""
    labels, diag, _ = component_spans(crack.numpy())  # [H,W], [n+1]
    keep = diag >= min_span  # [n+1]
    keep[0] = False  # background
    return torch.from_numpy(keep[labels])


def refine_one(image: torch.Tensor, stage1: torch.Tensor, cfg: RefineConfig) -> torch.Tensor:
    """One crack patch: image uint8 [3,S,S], stage-1 map [1,S,S] in [0,1] → labels uint8 [1,S,S]."""
    w = cfg.crack_width
    evidence = blackhat_response(grey(to_input(image[None], channels_last=False)), width=w)[0]  # [1,S,S]
    peak = float(stage1.max())
    region = stage1 >= cfg.region_level * peak if peak > 0 else torch.zeros_like(stage1, dtype=torch.bool)
    region = dilate_square(region[None], int(round(w)))[0]  # [1,S,S]
    labels = torch.zeros_like(stage1, dtype=torch.uint8)
    if not bool(region.any()):
        return labels
    t = otsu_threshold(evidence[region])
    crack = region & (evidence >= t)
    crack = _drop_short(crack[0], min_span=cfg.min_length * w)[None]
    uncertain = (region & (evidence >= t / 2)) | (~region & (evidence >= t))
    uncertain |= dilate_square(crack[None], cfg.band)[0]
    labels[uncertain] = IGNORE
    labels[crack] = 1
    return labels


@torch.no_grad()
def refine_pseudo_labels(images: torch.Tensor, labels: torch.Tensor, stage1_maps: torch.Tensor, *,
                         cfg: RefineConfig | None = None, progress: bool = False) -> torch.Tensor:
    """Pixel pseudo-labels of a training split.

    Args:
        images: uint8 [N,3,S,S].
        labels: [N] image labels in {0,1}.
        stage1_maps: [N,1,S,S] stage-1 heatmaps in [0,1] at patch resolution.
        cfg: The refinement levels.
        progress: Show a tqdm bar.

    Returns:
        uint8 [N,1,S,S]: 1 crack, 0 background, 255 ignore.
    """
    cfg = cfg or RefineConfig()
    out = torch.zeros(images.shape[0], 1, *images.shape[-2:], dtype=torch.uint8)
    for i in tqdm(range(len(images)), desc="refining pseudo-labels", disable=not progress, leave=False):
        if labels[i] > 0.5:
            out[i] = refine_one(images[i], stage1_maps[i].float(), cfg)
    return out


@torch.no_grad()
def refined_labels(stage1: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                   cfg: RefineConfig | None = None, batch_size: int = 32, precision: str = "auto",
                   progress: bool = False) -> torch.Tensor:
    """Run a stage-1 model over uint8 patches [N,3,S,S] and refine its maps: → uint8 [N,1,S,S].

    Batch by batch, so the float maps of a whole split are never held at once.
    """
    out = torch.zeros(images.shape[0], 1, *images.shape[-2:], dtype=torch.uint8)
    for idx, maps in _maps_of_positives(stage1, images, labels, batch_size=batch_size, precision=precision,
                                        progress=progress, desc="stage-2 pseudo-labels"):
        for j, i in enumerate(idx):
            out[i] = refine_one(images[i], maps[j].float(), cfg or RefineConfig())
    return out


@torch.no_grad()
def _maps_of_positives(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                       precision: str, progress: bool, desc: str, dense: bool = False):
    """Yield (indices, maps [b,1,S,S]) for the crack patches, batch by batch, under `precision`'s autocast.

    `dense`: the model's `forward_dense` map logits (stage 2) instead of its heatmap.
    """
    model = model.eval()
    pos = torch.nonzero(labels > 0.5).flatten().tolist()
    for start in tqdm(range(0, len(pos), batch_size), desc=desc, disable=not progress, leave=False):
        idx = pos[start:start + batch_size]
        with autocast_for("cpu" if images.device.type == "cpu" else images.device, precision):
            x = to_input(images[idx], channels_last=False)
            _, maps = model.forward_dense(x) if dense else model(x)  # [b,1,S,S]
        yield idx, maps


SELF_CRACK = 0.5  # self-training: pixels the model maps at or above this are crack ...
SELF_BACKGROUND = 0.1  # ... at or below this background, in between ignored


@torch.no_grad()
def self_training_labels(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                         band: int = 0, batch_size: int = 32, precision: str = "auto",
                         progress: bool = False) -> torch.Tensor:
    """A stage-2 model's own confident pixels as labels for one more round: → uint8 [N,1,S,S].

    Crack patches: crack where the map is ≥ SELF_CRACK, background where it is ≤ SELF_BACKGROUND,
    ignored in between and, with `band` > 0, in a ring of that many px around the crack. No ring by
    default: the model's own 0.5 boundary is where widths are measured, and an ignored ring let
    a round grow a drawn 15 px crack to 16 px (round 1's ring is for the refinement's edges). A crack patch
    with no confident pixel is all ignored (only its image label trains): calling its missed crack
    background would teach the miss. Crack-free patches are all background, as in the first round.
    """
    out = torch.zeros(images.shape[0], 1, *images.shape[-2:], dtype=torch.uint8)
    for idx, logits in _maps_of_positives(model, images, labels, batch_size=batch_size, precision=precision,
                                          progress=progress, desc="self-training labels", dense=True):
        p = torch.sigmoid(logits.float())
        crack = p >= SELF_CRACK
        block = torch.full_like(p, float(IGNORE), dtype=torch.float32)
        block[p <= SELF_BACKGROUND] = 0
        block[dilate_square(crack, band)] = IGNORE
        block[crack] = 1
        block[~crack.flatten(1).any(dim=1)] = IGNORE  # a crack patch the model found nothing in: unknown pixels
        out[idx] = block.to(torch.uint8)
    return out
