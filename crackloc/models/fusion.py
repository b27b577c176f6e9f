"""MS-RFE: multi-scale residual feature fusion (paper eq. 1–3, read as DESIGN.md §1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crackloc.tensors import nominal_stride, upsample_cells


def align_to(x: torch.Tensor, size: tuple[int, int], *, phase: float = 0.0) -> torch.Tensor:
    """[B,C,h,w] → [B,C,*size] on the same pixels: every output cell describes the pixels its own
    stride puts it on (`crackloc.tensors.upsample_cells`).

    Shrinking by k: a centred (2·⌊k/2⌋+1)² box mean, read at source cell k·j + phase·(k−1).
    Growing by k: bilinear, target cell j reading source cell (j − phase·(k−1)) / k.
    """
    h = x.shape[-2]
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if h > size[0]:
        k = nominal_stride(h, size[0])
        r = k // 2
        smooth = F.avg_pool2d(x, 2 * r + 1, stride=1, padding=r, count_include_pad=False)  # [B,C,h,w]
        iy, ix = (torch.clamp(torch.arange(n) * k + round(phase * (k - 1)), max=m - 1).to(x.device)
                  for n, m in zip(size, x.shape[-2:], strict=True))
        return smooth.index_select(-2, iy).index_select(-1, ix)
    return upsample_cells(x, size, stride=nominal_stride(size[0], h), phase=phase)


class SqueezeExcite(nn.Module):
    """w = σ(FC(ReLU(FC(GAP(F))))); returns F ⊙ w (channel-wise, reduction r)."""

    def __init__(self, channels: int, *, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3))  # [B,C]
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(w))))  # [B,C]
        return x * w[:, :, None, None]  # [B,C,h,w]


class MultiScaleFusion(nn.Module):
    """Fuse backbone maps on one grid (input size / fusion stride; 14×14 at 224 px).

    `mode='none'` passes the deepest map through (single-scale ablation); `concat` is
    resize → concat → Conv1x1 → BN → ReLU; `attention` adds squeeze-and-excitation.
    """

    def __init__(self, in_channels: list[int], *, mode: str = "attention", out_channels: int = 512,
                 reduction: int = 16, phase: float = 0.0) -> None:
        super().__init__()
        self.mode, self.phase = mode, phase
        if mode == "none":
            self.out_channels = in_channels[-1]
            return
        self.project = nn.Sequential(
            nn.Conv2d(sum(in_channels), out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.se = SqueezeExcite(out_channels, reduction=reduction) if mode == "attention" else nn.Identity()
        self.out_channels = out_channels

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """[F_s [B,C_s,h_s,w_s]] → F_fused [B,C_out,*size] (`none`: the deepest map as it is)."""
        if self.mode == "none":
            return feats[-1]
        x = torch.cat([align_to(f, size, phase=self.phase) for f in feats], dim=1)  # [B,ΣC_s,h,w]
        return self.se(self.project(x))  # [B,C_out,h,w]
