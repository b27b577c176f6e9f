"""Synthetic crack fixtures: thin dark random curves on a noisy concrete-like texture.

Made in code with exact masks, for tests and smoke runs (no files, no network).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def concrete_texture(h: int, w: int, *, generator: torch.Generator) -> torch.Tensor:
    """Grey mottled texture with fine grain: → [3,H,W] float in [0,1]."""
    coarse = torch.rand(1, 1, max(h // 16, 2), max(w // 16, 2), generator=generator)
    coarse = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    grain = torch.rand(h, w, generator=generator)
    base = 0.55 + 0.12 * (coarse - 0.5) + 0.10 * (grain - 0.5)  # [H,W]
    tint = torch.tensor([1.0, 0.98, 0.95]).view(3, 1, 1)
    return (base.unsqueeze(0) * tint).clamp(0, 1)


def random_crack_mask(h: int, w: int, *, generator: torch.Generator, width: float = 1.5) -> torch.Tensor:
    """A random wandering curve across the image: → bool mask [H,W]."""
    steps = 4 * max(h, w)
    angle = float(torch.rand(1, generator=generator)) * 2 * math.pi
    y = float(torch.rand(1, generator=generator)) * h
    x = float(torch.rand(1, generator=generator)) * w
    turns = (torch.rand(steps, generator=generator) - 0.5) * 0.35
    ys, xs = [], []
    for direction in (1.0, -1.0):
        cy, cx, a = y, x, angle
        for t in range(steps // 2):
            a += float(turns[t])
            cy += direction * math.sin(a) * 0.5
            cx += direction * math.cos(a) * 0.5
            if not (0 <= cy < h and 0 <= cx < w):
                break
            ys.append(cy)
            xs.append(cx)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    mask = torch.zeros(h, w, dtype=torch.bool)
    pts = torch.tensor([ys, xs]).T if ys else torch.zeros(0, 2)
    r = max(width / 2, 0.5)
    for py, px in pts[:: 2].tolist():
        y0, y1 = max(int(py - r - 1), 0), min(int(py + r + 2), h)
        x0, x1 = max(int(px - r - 1), 0), min(int(px + r + 2), w)
        d2 = (yy[y0:y1, x0:x1] - py) ** 2 + (xx[y0:y1, x0:x1] - px) ** 2
        mask[y0:y1, x0:x1] |= d2 <= r * r
    return mask


def make_crack_image(h: int, w: int, *, crack: bool, seed: int, width: float = 1.5,
                     darkness: float = 0.35) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixture: (image [3,H,W] float in [0,1], mask [1,H,W] float in {0,1})."""
    g = torch.Generator().manual_seed(seed)
    img = concrete_texture(h, w, generator=g)
    mask = random_crack_mask(h, w, generator=g, width=width) if crack else torch.zeros(h, w, dtype=torch.bool)
    img = torch.where(mask.unsqueeze(0), img * (1 - darkness) - 0.05, img).clamp(0, 1)
    return img, mask.float().unsqueeze(0)


def make_crack_set(n: int, *, size: int = 64, seed: int = 0, width: float = 1.5
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n fixtures, half with a crack: (images uint8 [n,3,S,S], labels [n], masks [n,1,S,S])."""
    imgs, labels, masks = [], [], []
    for i in range(n):
        img, mask = make_crack_image(size, size, crack=i % 2 == 0, seed=seed * 100_003 + i, width=width)
        imgs.append((img * 255).round().to(torch.uint8))
        labels.append(float(i % 2 == 0))
        masks.append(mask)
    return torch.stack(imgs), torch.tensor(labels), torch.stack(masks)


def write_crack_folder(root, n: int = 40, *, size: int = 64, seed: int = 0) -> None:
    """Write n fixtures as PNGs into root/Positive and root/Negative (for CLI tests and demos)."""
    from pathlib import Path

    from crackloc.io import save_png

    images, labels, _ = make_crack_set(n, size=size, seed=seed)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        sub = "Positive" if label > 0.5 else "Negative"
        save_png(Path(root) / sub / f"{i:05d}.png", img.permute(1, 2, 0).numpy())


def known_width_photo(widths: tuple[float, ...] = (1, 3, 7, 15), *, h: int = 900, w: int = 1200, seed: int = 0,
                      darkness: float = 0.6) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A photo-sized fixture with one gently curving crack per width, in horizontal lanes.

    Crack k is the band within widths[k]/2 px (measured across the curve) of
    y = c_k + 12·sin(2πx/500), from 8 % to 92 % of the image width.
    Returns (image uint8 [3,H,W], one bool mask [H,W] per crack).
    """
    g = torch.Generator().manual_seed(seed)
    img = concrete_texture(h, w, generator=g)  # [3,H,W]
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    slope = 12 * 2 * math.pi / 500 * torch.cos(2 * math.pi * xx / 500)  # dy/dx of the centre line
    inside = (xx >= 0.08 * w) & (xx <= 0.92 * w)
    masks = []
    for k, width in enumerate(widths):
        centre = (k + 0.5) * h / len(widths) + 12 * torch.sin(2 * math.pi * xx / 500)  # [H,W]
        across = (yy - centre).abs() / torch.sqrt(1 + slope**2)  # distance across the curve
        mask = inside & (across <= width / 2)
        masks.append(mask)
        img = torch.where(mask.unsqueeze(0), img * (1 - darkness), img)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), masks


def draw_line(h: int, w: int, *, angle_deg: float, offset: float, width: float = 3.0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 [3,H,W] grey image with one dark straight line through the centre (+ offset, px).

    Returns the image, the line's unit normal (ny, nx) and its signed distance map [H,W].
    """
    t = math.radians(angle_deg)
    normal = torch.tensor([math.cos(t), -math.sin(t)])  # (y, x) normal of a line at angle t
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    dist = (yy - h / 2) * normal[0] + (xx - w / 2) * normal[1] - offset  # [H,W] signed distance
    img = torch.full((3, h, w), 200.0)
    img[:, dist.abs() <= width / 2] = 60.0
    return img.to(torch.uint8), normal, dist
