"""The CAM head every CAM-style model uses: GAP → FC(C→1) for the logit, FC at every cell for the CAM."""

from __future__ import annotations

import torch
from torch import nn


def class_activation_map(feats: torch.Tensor, fc: nn.Linear) -> torch.Tensor:
    """CAM of the crack class: FC weights applied at every location. [B,C,h,w] → [B,1,h,w]."""
    w = fc.weight.to(feats.dtype)  # [1,C]
    return torch.einsum("oc,bchw->bohw", w, feats) + fc.bias.to(feats.dtype).view(1, -1, 1, 1)


class CamHead(nn.Linear):
    """FC(C→1) read two ways: `logits` (after GAP) and `cam` (at every cell; its mean is the logit).

    A plain `nn.Linear(C, 1)` underneath, so a model's `fc.weight`/`fc.bias` keys and its
    initialisation are those of the linear layer it replaces.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__(in_channels, 1)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Crack logit of each image: [B,C,h,w] → GAP [B,C] → FC → [B]."""
        return self(feats.mean(dim=(2, 3))).squeeze(1)  # [B]

    def cam(self, feats: torch.Tensor) -> torch.Tensor:
        """Class activation map: [B,C,h,w] → [B,1,h,w] (un-normalised)."""
        return class_activation_map(feats, self)
