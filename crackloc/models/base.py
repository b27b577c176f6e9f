"""The one output contract every localization model follows."""

from __future__ import annotations

import torch
from torch import nn

from crackloc.tensors import nominal_stride, upsample_cells


class LocalizationModel(nn.Module):
    """Base class: input RGB in [0,1] → `(logits [B], heatmap [B,1,H,W] in [0,1])`.

    Subclasses implement `forward_lowres`, returning the heatmap on the model's own grid
    (e.g. 14×14); `forward` upsamples it bilinearly to the input size, each cell over the pixels
    it describes (`cell_phase`, see `crackloc.tensors.upsample_cells`). Normalisation of the
    input (mean/std) happens inside the model, so callers pass plain [0,1] images.
    """

    uses_pseudo_masks: bool = False  # class default: trained with the L1 term against pseudo masks
    pseudo_source: str = "cam"  # which pseudo masks: 'cam' (teacher CAM, p95) | 'ddt' (DDT co-localisation)
    # | 'refined' (stage 2; `crackloc.training.sources`)
    dense_training: bool = False  # stage 2: trained by `forward_dense` on pixel labels with an ignore band
    cell_phase: float = 0.0  # where a map cell sits in its stride (0: torchvision CNNs; models on a backbone copy its)

    def __init__(self, *, mean: tuple[float, ...], std: tuple[float, ...],
                 uses_pseudo_masks: bool | None = None) -> None:
        """`uses_pseudo_masks` (a `ModelConfig.uses_pseudo_masks`): None keeps the class default."""
        super().__init__()
        if uses_pseudo_masks is not None:
            self.uses_pseudo_masks = uses_pseudo_masks
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] → normalised input for the backbone."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward_lowres(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,3,H,W] in [0,1] → (logits [B], heatmap [B,1,h,w] in [0,1])."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, low = self.forward_lowres(x)  # [B], [B,1,h,w]
        size = tuple(x.shape[-2:])
        heatmap = upsample_cells(low.float(), size, stride=nominal_stride(size[0], low.shape[-2]),
                                 phase=self.cell_phase)  # [B,1,H,W]
        return logits.float(), heatmap.clamp(0.0, 1.0)  # [B], [B,1,H,W]


def minmax_normalize(cam: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image min-max to [0,1]: [B,1,h,w] → [B,1,h,w]."""
    flat = cam.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return (cam - lo) / (hi - lo + eps)
