"""PSOL: pseudo-supervised object localisation (Zhang et al., ECCV 2020; the paper's [20]).

PSOL splits localisation from classification: DDT co-localisation (first principal
component of deep descriptors over the positive training images, see
`crackloc.training.ddt`) gives class-agnostic pseudo maps, and a separate network is
trained to regress them. PSOL regresses boxes; cracks are thin curves, so here the target
is DDT's positive region on the 14×14 grid and the network regresses that map.

Adaptation: one ResNet-18 (layer4 at output stride 16) with two heads, a small conv head
regressing the map (sigmoid, so a crack-free image can stay dark) and GAP → FC(512→1) for
the label, trained jointly with the shared loop's BCE + λ·L1(map, DDT map);
`pseudo_source = "ddt"` tells `train_run` which pseudo maps to make.
"""

from __future__ import annotations

import torch
from torch import nn

from crackloc.config import ModelConfig
from crackloc.models.backbone import backbone_spec, build_backbone
from crackloc.models.base import LocalizationModel
from crackloc.models.heads import CamHead
from crackloc.models.registry import register

PSOL_STRIDE = 16  # the regressed map is 14×14 at 224 px, the proposed model's grid
HEAD_CHANNELS = 128


class PSOLNet(LocalizationModel):
    """ResNet-18 → (conv regression head → map [B,1,h,w], GAP → FC → logits [B])."""

    uses_pseudo_masks = True
    pseudo_source = "ddt"

    def __init__(self, cfg: ModelConfig) -> None:
        backbone = build_backbone(cfg.backbone, scales=[backbone_spec(cfg.backbone).deepest],
                                  output_stride=PSOL_STRIDE, pretrained=cfg.pretrained)
        super().__init__(mean=backbone.mean, std=backbone.std, uses_pseudo_masks=cfg.uses_pseudo_masks)
        self.cell_phase = backbone.cell_phase
        self.cfg = cfg
        self.backbone = backbone
        channels = backbone.channels[-1]
        self.regressor = nn.Sequential(
            nn.Conv2d(channels, HEAD_CHANNELS, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(HEAD_CHANNELS),
            nn.ReLU(inplace=True),
            nn.Conv2d(HEAD_CHANNELS, 1, kernel_size=1),
        )
        self.fc = CamHead(channels)

    def forward_lowres(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(self.normalize(x))[-1]  # [B,C,H/16,W/16]
        logits = self.fc.logits(feats)  # [B]
        return logits, torch.sigmoid(self.regressor(feats).float())  # [B], [B,1,h,w]


@register("psol")
def build_psol(cfg: ModelConfig) -> PSOLNet:
    """PSOL [20]: a network regressing DDT co-localisation maps, plus a classification head."""
    return PSOLNet(cfg)
