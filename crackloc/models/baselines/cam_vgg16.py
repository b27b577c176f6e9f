"""CAM with VGG-16 (Zhou et al., CVPR 2016; the paper's baseline [9]).

VGG-16's 13 conv layers with the last max-pool removed (stride 16: 14×14 at 224 px),
GAP, FC(512→1); the heatmap is the class activation map of the crack logit.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from crackloc.config import ModelConfig
from crackloc.errors import CracklocError
from crackloc.models.backbone import IMAGENET_MEAN, IMAGENET_STD, read_state_dict, resolve_weights
from crackloc.models.base import LocalizationModel
from crackloc.models.refine import class_activation_map, normalize_heatmap
from crackloc.models.registry import register

VGG16_HUB_FILE = "vgg16-397923af.pth"  # torchvision's ImageNet VGG-16 file in the torch hub cache
LAST_POOL = 30  # index of the fifth max-pool in torchvision's vgg16().features


class CamVGG16(LocalizationModel):
    """VGG-16 conv body (no last pool) → GAP → FC(512→1); heatmap = normalised CAM."""

    def __init__(self, cfg: ModelConfig) -> None:
        from torchvision.models import vgg16

        super().__init__(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self.cfg = cfg
        self.features = vgg16(weights=None).features[:LAST_POOL]  # keeps torchvision's indices
        self.fc = nn.Linear(512, 1)
        self.pretrained_source = load_vgg16_weights(self.features, cfg.pretrained)

    def forward_lowres(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(self.normalize(x))  # [B,512,H/16,W/16]
        logits = self.fc(feats.mean(dim=(2, 3))).squeeze(1)  # [B]
        cam = class_activation_map(feats, self.fc)  # [B,1,H/16,W/16]
        return logits, normalize_heatmap(cam, mode=self.cfg.heatmap_norm)

    @torch.no_grad()
    def raw_cam(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised CAM on the model grid: [B,3,H,W] → [B,1,H/16,W/16]."""
        return class_activation_map(self.features(self.normalize(x)), self.fc).float()


def load_vgg16_weights(features: nn.Sequential, pretrained: str) -> str:
    """Load torchvision's ImageNet VGG-16 conv weights ('auto': hub cache, 'none', or a path)."""
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / VGG16_HUB_FILE]
    path = resolve_weights(pretrained, candidates, "vgg16")
    if path is None:
        return "none"
    sd = read_state_dict(path)
    own = features.state_dict()
    usable = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    usable = {k: v for k, v in usable.items() if k in own and own[k].shape == v.shape}
    if len(usable) != len(own):
        raise CracklocError(f"{path}: does not match VGG-16 ({len(own) - len(usable)} of {len(own)} "
                            "conv tensors missing)")
    features.load_state_dict(usable)
    return str(path)


@register("cam_vgg16")
def build_cam_vgg16(cfg: ModelConfig) -> CamVGG16:
    """CAM [9]: VGG-16 without its last max-pool, GAP, FC, class activation map."""
    return CamVGG16(cfg)
