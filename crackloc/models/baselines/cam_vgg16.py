"""CAM with VGG-16 (Zhou et al., CVPR 2016; the paper's baseline [9]).

VGG-16's 13 conv layers with the last max-pool removed (stride 16: 14×14 at 224 px),
GAP, FC(512→1); the heatmap is the class activation map of the crack logit.
"""

from __future__ import annotations

import torch
from torch import nn

from crackloc.config import ModelConfig
from crackloc.models.backbone import IMAGENET_MEAN, IMAGENET_STD
from crackloc.models.base import LocalizationModel
from crackloc.models.heads import CamHead
from crackloc.models.refine import normalize_heatmap
from crackloc.models.registry import register
from crackloc.models.weights import hub_checkpoint, load_weights

VGG16_HUB_FILE = "vgg16-397923af.pth"  # torchvision's ImageNet VGG-16 file in the torch hub cache
LAST_POOL = 30  # index of the fifth max-pool in torchvision's vgg16().features


class CamVGG16(LocalizationModel):
    """VGG-16 conv body (no last pool) → GAP → FC(512→1); heatmap = normalised CAM."""

    def __init__(self, cfg: ModelConfig) -> None:
        from torchvision.models import vgg16

        super().__init__(mean=IMAGENET_MEAN, std=IMAGENET_STD, uses_pseudo_masks=cfg.uses_pseudo_masks)
        self.cell_phase = 0.5  # 2×2 pools / 16×16 patches: a cell is centred on the pixels it pools
        self.cfg = cfg
        self.features = vgg16(weights=None).features[:LAST_POOL]  # keeps torchvision's indices
        self.fc = CamHead(512)
        self.pretrained_source = load_vgg16_weights(self.features, cfg.pretrained)

    def forward_lowres(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(self.normalize(x))  # [B,512,H/16,W/16]
        logits = self.fc.logits(feats)  # [B]
        cam = self.fc.cam(feats)  # [B,1,H/16,W/16]
        return logits, normalize_heatmap(cam, mode=self.cfg.heatmap_norm)

    @torch.no_grad()
    def raw_cam(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised CAM on the model grid: [B,3,H,W] → [B,1,H/16,W/16]."""
        return self.fc.cam(self.features(self.normalize(x))).float()  # [B,1,H/16,W/16]


def load_vgg16_weights(features: nn.Sequential, pretrained: str) -> str:
    """Load torchvision's ImageNet VGG-16 conv weights ('auto': hub cache, 'none', or a path)."""
    return load_weights(features, pretrained, candidates=[hub_checkpoint(VGG16_HUB_FILE)], what="VGG-16",
                        prefix="features.")


@register("cam_vgg16")
def build_cam_vgg16(cfg: ModelConfig) -> CamVGG16:
    """CAM [9]: VGG-16 without its last max-pool, GAP, FC, class activation map."""
    return CamVGG16(cfg)
