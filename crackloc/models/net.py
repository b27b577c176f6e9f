"""The proposed network (backbone → MS-RFE → AHR → GAP/FC) and the CAM teacher."""

from __future__ import annotations

import dataclasses

import torch

from crackloc.config import ModelConfig
from crackloc.errors import CracklocError
from crackloc.models.backbone import backbone_spec, build_backbone
from crackloc.models.base import LocalizationModel
from crackloc.models.fusion import MultiScaleFusion
from crackloc.models.heads import CamHead
from crackloc.models.refine import AdaptiveHeatmapRefinement, normalize_heatmap
from crackloc.models.registry import register


class CrackLocNet(LocalizationModel):
    """Backbone scales → fusion (none/concat/attention) → optional AHR → GAP → FC(C→1).

    With `fusion='none', ahr=False` and the deepest scale only, this is plain CAM. Trained with
    the L1 term against pseudo masks unless `cfg.uses_pseudo_masks` says otherwise.
    """

    uses_pseudo_masks = True

    def __init__(self, cfg: ModelConfig) -> None:
        backbone = build_backbone(cfg.backbone, scales=cfg.scales, output_stride=cfg.output_stride,
                                  pretrained=cfg.pretrained)
        super().__init__(mean=backbone.mean, std=backbone.std, uses_pseudo_masks=cfg.uses_pseudo_masks)
        self.cell_phase = backbone.cell_phase
        self.cfg = cfg
        self.backbone = backbone
        self.fusion = MultiScaleFusion(backbone.channels, mode=cfg.fusion, out_channels=cfg.fused_channels,
                                       reduction=cfg.se_reduction, phase=backbone.cell_phase)
        channels = self.fusion.out_channels
        self.ahr = (AdaptiveHeatmapRefinement(channels, percentile=cfg.ahr_percentile, norm=cfg.heatmap_norm)
                    if cfg.ahr else None)
        self.fc = CamHead(channels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,H,W] in [0,1] → fused features [B,C,h,w] (h = ⌈H / fusion_stride⌉)."""
        size = (-(-x.shape[-2] // self.cfg.fusion_stride), -(-x.shape[-1] // self.cfg.fusion_stride))
        return self.fusion(self.backbone(self.normalize(x)), size)

    def forward_lowres(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)  # [B,C,h,w]
        if self.ahr is not None:
            feats = self.ahr.attend(feats)  # [B,C,h,w]
        logits = self.fc.logits(feats)  # [B]
        cam = self.fc.cam(feats)  # [B,1,h,w]
        if self.training and self.cfg.l1_map == "uncut":  # every cell gets the L1 gradient
            return logits, normalize_heatmap(cam, mode=self.cfg.heatmap_norm)
        if self.ahr is not None:
            return logits, self.ahr.refine(cam)
        return logits, normalize_heatmap(cam, mode=self.cfg.heatmap_norm)

    @torch.no_grad()
    def raw_cam(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised CAM on the model grid, for pseudo masks: [B,3,H,W] → [B,1,h,w]."""
        feats = self.features(x)  # [B,C,h,w]
        if self.ahr is not None:
            feats = self.ahr.attend(feats)  # [B,C,h,w]
        return self.fc.cam(feats).float()  # [B,1,h,w]


@register("crackloc")
def build_crackloc(cfg: ModelConfig) -> CrackLocNet:
    """The proposed model: multi-scale fusion + AHR, trained with teacher pseudo masks."""
    return CrackLocNet(cfg)


@register("resnet18_cam")
def build_resnet18_cam(cfg: ModelConfig) -> CrackLocNet:
    """The teacher / ResNet-18+CAM baseline: deepest stage only, GAP, FC, plain CAM (no L1 term by default)."""
    pseudo = False if cfg.uses_pseudo_masks is None else cfg.uses_pseudo_masks
    return CrackLocNet(dataclasses.replace(cfg, scales=[backbone_spec(cfg.backbone).deepest], fusion="none",
                                           ahr=False, uses_pseudo_masks=pseudo))


ABLATION_ROWS: dict[str, dict] = {  # Table II, top to bottom
    "single_scale": dict(fusion="none", ahr=False),
    "msrfe_concat": dict(fusion="concat", ahr=False),
    "msrfe_attention": dict(fusion="attention", ahr=False),
    "ahr": dict(fusion="none", ahr=True),
    "full_concat": dict(fusion="concat", ahr=True),
    "full_attention": dict(fusion="attention", ahr=True),  # = the proposed model
}


def ablation_config(base: ModelConfig, variant: str) -> ModelConfig:
    """Config of one Table II row, from the proposed model's config.

    Rows keep `base.name` and `base.uses_pseudo_masks`, so with the proposed model's config
    every row trains with the L1 term against pseudo masks, as the proposed model does.
    """
    if variant not in ABLATION_ROWS:
        raise CracklocError(f"unknown ablation {variant!r}; choose from {', '.join(ABLATION_ROWS)}")
    over = ABLATION_ROWS[variant]
    scales, stride = base.scales, base.output_stride
    if over["fusion"] == "none":
        # Single scale: the deepest stage alone, run at the fusion stride so every row of
        # Table II has the same heatmap grid (14×14 at 224 px).
        scales = [scales[-1] if scales else backbone_spec(base.backbone).deepest]
        stride = base.fusion_stride if base.fusion_stride in (8, 16, 32) else stride
    return dataclasses.replace(base, scales=scales, output_stride=stride, **over)
