"""Things on concrete that look like cracks and are not, drawn on patches: hard negatives and a benchmark.

A crack is a thin, dark, tortuous line, lighter on both sides. Real structures also show:
- `seam`: formwork or planking seams, straight thin dark lines across the whole patch, often with
  a light lip beside them;
- `joint`: construction or contraction joints, straight dark grooves 4-12 px wide, shaded on one side;
- `step`: a straight light/dark step (a pour line, paint, the edge of a wet patch), 0-2 px soft;
- `shadow`: a soft step, 4-16 px wide;
- `stain`: a dark, soft, low-contrast blotch;
- `bughole`: small dark air voids (3-12 px), a few to many;
- `spall`: an irregular dark patch with a rough outline.

Each drawer takes uint8 patches [B,3,S,S] and a torch Generator and returns the changed patches
and the region it drew (bool [B,1,S,S]), so training can keep that region background and the
benchmark (`benchmarks/confusers.py`) can score how much of it a model marks as crack.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Drawer = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def _u(g: torch.Generator, n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    """n uniform numbers in [lo, hi): [n,1,1] on `device` (drawn on the CPU, so a seed gives the same on any device)."""
    return (lo + (hi - lo) * torch.rand(n, 1, 1, generator=g)).to(device)


def _line_distance(n: int, h: int, w: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Signed distance [n,H,W] (px) from a random straight line through the patch (any angle, offset)."""
    theta = _u(g, n, 0.0, math.pi, device)
    offset = _u(g, n, -0.4, 0.4, device) * min(h, w)
    yy = torch.arange(h, dtype=torch.float32, device=device).view(1, h, 1) - (h - 1) / 2
    xx = torch.arange(w, dtype=torch.float32, device=device).view(1, 1, w) - (w - 1) / 2
    return yy * torch.cos(theta) + xx * torch.sin(theta) - offset


def _apply(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply uint8 images [B,3,H,W] by a brightness factor [B,H,W]: → uint8."""
    return (images.float() * factor[:, None]).round().clamp(0, 255).to(torch.uint8)


def _smooth_noise(n: int, h: int, w: int, g: torch.Generator, device: torch.device, *, cells: int) -> torch.Tensor:
    """Smooth random field [n,H,W] in about [-1, 1]: bicubic upsampling of a cells×cells grid."""
    grid = torch.randn(n, 1, cells, cells, generator=g).to(device)
    field = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)[:, 0]
    return field / field.flatten(1).abs().amax(1).clamp(min=1e-6).view(-1, 1, 1)


def seam(images: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A straight formwork seam: 1-3 px dark line (0.45-0.8x) with a light lip on one side."""
    n, _, h, w = images.shape
    d = _line_distance(n, h, w, g, images.device)
    width, dark = _u(g, n, 1.0, 3.0, images.device), _u(g, n, 0.45, 0.8, images.device)
    core = torch.sigmoid((width / 2 - d.abs()) * 2.0)  # [n,H,W] 1 on the line
    lip = torch.exp(-((d - width / 2 - 1.5) / 1.5) ** 2) * _u(g, n, 0.0, 0.15, images.device)
    out = _apply(images, 1.0 - (1.0 - dark) * core + lip)
    return out, (d.abs() <= width / 2 + 1)[:, None]


def joint(images: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A construction joint: a straight groove 4-12 px wide (0.35-0.75x), one wall in shade."""
    n, _, h, w = images.shape
    d = _line_distance(n, h, w, g, images.device)
    width, dark = _u(g, n, 4.0, 12.0, images.device), _u(g, n, 0.35, 0.75, images.device)
    inside = torch.sigmoid((width / 2 - d.abs()) * 1.5)
    shade = 1.0 - 0.4 * (d / width.clamp(min=1)).clamp(-0.5, 0.5)  # darker towards one wall
    factor = 1.0 - (1.0 - dark * shade) * inside
    return _apply(images, factor.clamp(0.1, 1.2)), (d.abs() <= width / 2 + 1)[:, None]


def step(images: torch.Tensor, g: torch.Generator, *, soft: tuple[float, float] = (0.0, 2.0)
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """A straight light/dark step (dark side 0.35-0.75x), `soft` px wide; the region is ±4 px of it."""
    n, _, h, w = images.shape
    d = _line_distance(n, h, w, g, images.device)
    width, dark = _u(g, n, *soft, images.device) + 1e-3, _u(g, n, 0.35, 0.75, images.device)
    factor = 1.0 - (1.0 - dark) * torch.sigmoid(d / width)
    return _apply(images, factor), (d.abs() <= 4 + soft[1])[:, None]


def shadow(images: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A shadow's edge: a soft step 4-16 px wide."""
    return step(images, g, soft=(4.0, 16.0))


def stain(images: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A dark soft blotch (0.55-0.85x at its core) covering about a fifth of the patch."""
    n, _, h, w = images.shape
    field = _smooth_noise(n, h, w, g, images.device, cells=4)  # [n,H,W]
    level = torch.quantile(field.flatten(1), 0.8, dim=1).view(-1, 1, 1)
    blob = torch.sigmoid((field - level) * 12.0)
    dark = _u(g, n, 0.55, 0.85, images.device)
    return _apply(images, 1.0 - (1.0 - dark) * blob), (blob > 0.5)[:, None]


def bughole(images: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """3-25 dark air voids, 3-12 px across (0.25-0.6x at the centre)."""
    n, _, h, w = images.shape
    dev = images.device
    yy = torch.arange(h, dtype=torch.float32, device=dev).view(1, h, 1)
    xx = torch.arange(w, dtype=torch.float32, device=dev).view(1, 1, w)
    factor = torch.ones(n, h, w, device=dev)
    region = torch.zeros(n, h, w, dtype=torch.bool, device=dev)
    count = int(torch.randint(3, 26, (1,), generator=g))
    for _ in range(count):
        cy, cx = _u(g, n, 0, h, dev), _u(g, n, 0, w, dev)
        r, dark = _u(g, n, 1.5, 6.0, dev), _u(g, n, 0.25, 0.6, dev)
        rr = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt() / r  # [n,H,W] 1 at the rim
        hole = torch.sigmoid((1.0 - rr) * 6.0)
        factor = torch.minimum(factor, 1.0 - (1.0 - dark) * hole)
        region |= rr <= 1.3
    return _apply(images, factor), region[:, None]


def spall(images: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """An irregular dark patch 20-70 px across with a rough outline (0.4-0.75x)."""
    n, _, h, w = images.shape
    dev = images.device
    yy = torch.arange(h, dtype=torch.float32, device=dev).view(1, h, 1)
    xx = torch.arange(w, dtype=torch.float32, device=dev).view(1, 1, w)
    cy, cx, r = _u(g, n, 0.2 * h, 0.8 * h, dev), _u(g, n, 0.2 * w, 0.8 * w, dev), _u(g, n, 10.0, 35.0, dev)
    rough = _smooth_noise(n, h, w, g, dev, cells=12) * 0.35
    inside = (((yy - cy) ** 2 + (xx - cx) ** 2).sqrt() / r + rough) <= 1.0
    dark = _u(g, n, 0.4, 0.75, dev)
    texture = 1.0 + 0.15 * _smooth_noise(n, h, w, g, dev, cells=24)  # rough broken surface inside
    factor = torch.where(inside, dark * texture, torch.ones_like(texture))
    soft = F.avg_pool2d(factor[:, None], 3, stride=1, padding=1)[:, 0]
    return _apply(images, soft), inside[:, None]


CONFUSERS: dict[str, Drawer] = {"seam": seam, "joint": joint, "step": step, "shadow": shadow, "stain": stain,
                                "bughole": bughole, "spall": spall}


def add_confusers(images: torch.Tensor, labels: torch.Tensor, *, share: float,
                  generator: torch.Generator | None = None, cracked: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a random confuser on a `share` of the patches: → (images, drawn region bool [B,1,S,S]).

    Crack-free patches only (their pixel labels, all background, stay right), unless `cracked`:
    then crack patches too, and the caller labels the region background where it is not crack.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    b = images.shape[0]
    region = torch.zeros(b, 1, *images.shape[-2:], dtype=torch.bool, device=images.device)
    eligible = torch.ones(b, dtype=torch.bool) if cracked else labels.flatten().cpu() < 0.5
    pick = eligible & (torch.rand(b, generator=g) < share)  # [B] on the CPU
    if not bool(pick.any()):
        return images, region
    out = images.clone()
    kinds = list(CONFUSERS)
    choice = torch.randint(0, len(kinds), (b,), generator=g)
    for k, name in enumerate(kinds):
        idx = torch.nonzero(pick & (choice == k)).flatten().to(images.device)
        if len(idx):
            out[idx], region[idx] = CONFUSERS[name](images[idx], g)
    return out, region
