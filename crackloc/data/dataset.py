"""Decode a split once into memory (uint8), then serve batches with flips/rotations.

JPEG decoding is the slow part on a CPU, so each split is decoded once per run, resized to
the model input size, and kept as a uint8 tensor; normalisation happens inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from crackloc.data.split import Row
from crackloc.errors import CracklocError
from crackloc.io import failure_reason, load_rgb, rgb_to_tensor


@dataclass
class DecodedSplit:
    """Images of one split: uint8 [N,3,S,S], labels float [N], their manifest paths, failures."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)


def resize_uint8(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3,H,W] → uint8 [3,size,size] (bilinear, antialiased)."""
    if img.shape[-2:] == (size, size):
        return img
    x = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True,
                      align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8)


def stratified_subset(rows: list[Row], limit: int | None, *, seed: int) -> list[Row]:
    """At most `limit` rows keeping the class balance (deterministic for a seed)."""
    if limit is None or limit >= len(rows):
        return rows
    gen = torch.Generator().manual_seed(seed)
    out = []
    for cls in (0, 1):
        part = [r for r in rows if r.label == cls]
        share = round(limit * len(part) / len(rows))
        out += [part[i] for i in torch.randperm(len(part), generator=gen)[:share].tolist()]
    return sorted(out, key=lambda r: r.path)


def decode_rows(root: Path, rows: list[Row], *, size: int, desc: str = "decoding",
                progress: bool = True) -> DecodedSplit:
    """Decode and resize the images of `rows`; unreadable files are listed in `failed` (path, reason)."""
    images, labels, paths, failed = [], [], [], []
    for r in tqdm(rows, desc=desc, disable=not progress, unit="img", leave=False):
        path = root / r.path
        try:
            img = rgb_to_tensor(load_rgb(path))
        except CracklocError as exc:
            failed.append((str(path), failure_reason(exc, path)))
            continue
        images.append(resize_uint8(img, size))
        labels.append(float(r.label))
        paths.append(r.path)
    if not images:
        example = f"; e.g. {failed[0][0]}: {failed[0][1]}" if failed else ""
        raise CracklocError(f"{desc}: no readable images ({len(failed)} failed{example})")
    return DecodedSplit(torch.stack(images), torch.tensor(labels), paths, failed)


def augment(*maps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One random flip + 90° rotation applied alike to image and mask batches [B,C,h,w].

    Cracks have no up or down, so these keep the label and move the pseudo mask with the image.
    """
    k = int(torch.randint(0, 4, (1,)))
    flip = bool(torch.randint(0, 2, (1,)))
    out = []
    for m in maps:
        m = torch.rot90(m, k, dims=(2, 3)) if m.dim() == 4 else m
        out.append(m.flip(3) if flip and m.dim() == 4 else m)
    return tuple(out)


PIXEL_IGNORE = 255  # stage-2 pixel label that takes no part in the loss


def zoom_out(images: torch.Tensor, labels: torch.Tensor, *, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink a batch by `factor` and fill the patch again by mirroring it: thinner cracks, same labels.

    Args:
        images: uint8 [B,3,S,S].
        labels: stage-2 pixel labels [B,1,S,S] in {0, 1, PIXEL_IGNORE} (any dtype).
        factor: in (0.5, 1]; the shrunk patch is at least S/2 + 1 px, so one mirror fills each side.

    Returns:
        (uint8 [B,3,S,S], float [B,1,S,S]): a pixel is crack where at least half of its source window
        was crack and none of it ignored, background where all of it was background, and ignored
        otherwise (mixed border pixels; a crack too thin to fill half a pixel becomes ignore).
    """
    size = images.shape[-1]
    n = min(size, max(size // 2 + 1, round(size * factor)))
    if n == size:
        return images, labels.float()
    left, top = (int(v) for v in torch.randint(0, size - n + 1, (2,)))  # where the shrunk patch sits: anywhere
    pad = (left, size - n - left, top, size - n - top)
    img, out = _shrink(images, labels, n)
    return F.pad(img.float(), pad, mode="reflect").to(torch.uint8), F.pad(out, pad, mode="reflect")


def _shrink(images: torch.Tensor, labels: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [B,3,S,S] and pixel labels [B,1,S,S] → uint8 [B,3,n,n] and float labels [B,1,n,n].

    A pixel is crack where at least half of its source window was crack and none of it ignored,
    background where all of it was background, and ignored otherwise.
    """
    img = F.interpolate(images.float(), size=(n, n), mode="bilinear", antialias=True, align_corners=False)
    crack = F.interpolate((labels == 1).float(), size=(n, n), mode="area")  # [B,1,n,n] share of crack
    known = F.interpolate((labels != PIXEL_IGNORE).float(), size=(n, n), mode="area")
    out = torch.full_like(crack, float(PIXEL_IGNORE))
    out[(crack == 0) & (known >= 1 - 1e-6)] = 0.0
    out[(crack >= 0.5) & (known >= 1 - 1e-6)] = 1.0
    return img.round().clamp(0, 255).to(torch.uint8), out


def mosaic(images: torch.Tensor, labels: torch.Tensor, pixels: torch.Tensor, *,
           grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each patch becomes a `grid`×`grid` mosaic of shrunk patches: cracks 1/grid as wide, in context.

    Patch b keeps its image label: its own shrunk copy sits in a random cell, a crack patch's
    other cells come from any patch of the batch, a crack-free patch's only from crack-free ones
    (so the class balance holds and a crack-free mosaic has no crack anywhere).

    Args:
        images: uint8 [B,3,S,S]; labels: image labels [B] in {0,1}.
        pixels: stage-2 pixel labels [B,1,S,S] in {0, 1, PIXEL_IGNORE}.
        grid: cells per side (2: cracks half as wide; 4: a quarter).

    Returns:
        (uint8 [B,3,S,S], float [B,1,S,S]); a border left over when S is not a multiple of `grid`
        is mirrored from the mosaic.
    """
    b, size = images.shape[0], images.shape[-1]
    n = size // grid
    small, lab = _shrink(images, pixels, n)  # [B,3,n,n], [B,1,n,n]
    negatives = torch.nonzero(labels < 0.5).flatten()
    src = torch.randint(0, b, (b, grid * grid))  # [B,g*g] batch index of each cell
    if len(negatives):
        neg_pick = negatives[torch.randint(0, len(negatives), (b, grid * grid))]
        src = torch.where((labels < 0.5)[:, None], neg_pick, src)
    src[torch.arange(b), torch.randint(0, grid * grid, (b,))] = torch.arange(b)  # the patch itself, somewhere

    def tile(x: torch.Tensor) -> torch.Tensor:  # [B,C,n,n] → [B,C,g*n,g*n] in src's order
        cells = x[src]  # [B,g*g,C,n,n]
        cells = cells.view(b, grid, grid, x.shape[1], n, n).permute(0, 3, 1, 4, 2, 5)  # [B,C,g,n,g,n]
        return cells.reshape(b, x.shape[1], grid * n, grid * n)

    rest = size - grid * n
    pad = (0, rest, 0, rest)
    img = F.pad(tile(small).float(), pad, mode="reflect").to(torch.uint8)
    return img, F.pad(tile(lab), pad, mode="reflect")


def step_negatives(images: torch.Tensor, labels: torch.Tensor, *, share: float,
                   ratio: tuple[float, float] = (0.35, 0.75)) -> torch.Tensor:
    """Darken crack-free patches on one side of a random straight edge: hard negatives for stage 2.

    A crack is a dark line, lighter on both sides; a pour joint, a shadow's edge or the seam of two
    photos is a step, lighter on one side only. Without such negatives a model marks a strong step.

    Args:
        images: uint8 [B,3,S,S].
        labels: image labels [B] (1 crack, 0 crack-free); only crack-free patches are changed,
            so their pixel labels (all background) stay right.
        share: chance of a step per crack-free patch.
        ratio: range of the dark side's brightness relative to the light side.

    Returns:
        uint8 [B,3,S,S]: the edge at any angle and place (tiles cut steps anywhere), 0-2 px soft.
    """
    b, _, h, w = images.shape
    dev = images.device  # a GPU batch stays on its GPU
    pick = (labels.flatten().to(dev) < 0.5) & (torch.rand(b, device=dev) < share)  # [B]
    if not bool(pick.any()):
        return images
    n = int(pick.sum())
    theta = torch.rand(n, 1, 1, device=dev) * torch.pi
    offset = (torch.rand(n, 1, 1, device=dev) - 0.5) * (min(h, w) - 8)  # up to S/2 - 4 px from the centre
    soft = torch.rand(n, 1, 1, device=dev) * 2.0 + 1e-3
    dark = ratio[0] + (ratio[1] - ratio[0]) * torch.rand(n, 1, 1, device=dev)
    yy = torch.arange(h, dtype=torch.float32, device=dev).view(1, h, 1) - (h - 1) / 2
    xx = torch.arange(w, dtype=torch.float32, device=dev).view(1, 1, w) - (w - 1) / 2
    dist = yy * torch.cos(theta) + xx * torch.sin(theta) - offset  # [n,H,W] signed px from the edge
    factor = 1.0 - (1.0 - dark) * torch.sigmoid(dist / soft)  # [n,H,W]: 1 on the light side, dark on the other
    out = images.clone()
    out[pick] = (images[pick].float() * factor[:, None]).round().clamp(0, 255).to(torch.uint8)
    return out


class PatchDataset(Dataset):
    """Indexable view: (image uint8 [3,S,S], label float, pseudo mask float [1,h,w] or empty)."""

    def __init__(self, split: DecodedSplit, pseudo: torch.Tensor | None = None) -> None:
        self.split = split
        self.pseudo = pseudo

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.pseudo[i].float() if self.pseudo is not None else torch.zeros(0)
        return self.split.images[i], self.split.labels[i], p
