"""MS-RFE: multi-scale residual feature fusion (paper eq. 1–3, read as DESIGN.md §1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B,C,h,w] → [B,C,*size]: area pooling when shrinking, bilinear when growing."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


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
                 reduction: int = 16) -> None:
        super().__init__()
        self.mode = mode
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
        x = torch.cat([resize_to(f, size) for f in feats], dim=1)  # [B,ΣC_s,h,w]
        return self.se(self.project(x))  # [B,C_out,h,w]
