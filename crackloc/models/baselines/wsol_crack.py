"""WSOL-Crack stand-in: a residual crack classifier whose heatmap is thresholded Grad-CAM++.

The paper's reference [12] cannot be identified, so this follows the recipe of König et al.
(crack localisation from a classifier's saliency + thresholding): ResNet-18 → GAP → FC(512→1),
Grad-CAM++ (pytorch-grad-cam) of the crack logit on the last stage, per-image min-max to
[0,1], then values below the per-image `ahr_percentile` (90 by default) set to 0.

Training needs only the logits, so `forward_lowres` (used by the training loop and the
validation AUROC) returns the plain CAM and costs one forward pass. `forward`, the public
contract, returns the Grad-CAM++ heatmap: it needs gradients, so it re-enables autograd
(also under `torch.inference_mode`), runs in fp32 (autocast off: the library converts maps
to numpy), releases its hooks, and clears the parameter gradients it made. This model is
not ONNX-exportable.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from crackloc.config import ModelConfig
from crackloc.models.backbone import Backbone, backbone_spec, build_backbone
from crackloc.models.base import LocalizationModel
from crackloc.models.heads import CamHead
from crackloc.models.refine import normalize_heatmap, percentile_threshold
from crackloc.models.registry import register

GRADCAM_CHUNK = 16  # images per Grad-CAM++ backward pass (bounds memory)


class ResidualClassifier(nn.Module):
    """Normalised image [B,3,H,W] → crack logit [B,1] (the module Grad-CAM++ runs on)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = CamHead(backbone.channels[-1])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] → last-stage map [B,512,h,w]."""
        return self.backbone(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc.logits(self.features(x))[:, None]  # [B,1]


class WSOLCrack(LocalizationModel):
    """ResNet-18 crack classifier with thresholded Grad-CAM++ heatmaps (see the module notes)."""

    def __init__(self, cfg: ModelConfig) -> None:
        backbone = build_backbone(cfg.backbone, scales=[backbone_spec(cfg.backbone).deepest],
                                  output_stride=cfg.output_stride, pretrained=cfg.pretrained)
        super().__init__(mean=backbone.mean, std=backbone.std, uses_pseudo_masks=cfg.uses_pseudo_masks)
        self.cell_phase = backbone.cell_phase
        self.cfg = cfg
        self.net = ResidualClassifier(backbone)

    @property
    def pretrained_source(self) -> str:
        """Where the backbone's weights came from ('none' = random init)."""
        return self.net.backbone.pretrained_source

    @staticmethod
    def target_layer(net: ResidualClassifier) -> nn.Module:
        """The last backbone stage of `net`, whose activations Grad-CAM++ weighs."""
        return net.backbone.stage(net.backbone.scales[-1])

    def forward_lowres(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training path: logits [B] and the plain CAM [B,1,h,w] (min-max to [0,1])."""
        feats = self.net.features(self.normalize(x))  # [B,C,h,w]
        logits = self.net.fc.logits(feats)  # [B]
        return logits, normalize_heatmap(self.net.fc.cam(feats), mode="max")  # [B], [B,1,h,w]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,3,H,W] in [0,1] → (logits [B], thresholded Grad-CAM++ heatmap [B,1,H,W])."""
        net = self.net
        with torch.inference_mode(False):
            if any(t.is_inference() for t in (*net.parameters(), *net.buffers())):
                # Weights converted under inference_mode (e.g. `.to(channels_last)` there) cannot
                # take part in autograd: work on a normal copy.
                net = copy.deepcopy(net)
        parts = [self._gradcam_pp(net, x[i:i + GRADCAM_CHUNK]) for i in range(0, len(x), GRADCAM_CHUNK)]
        logits = torch.cat([p[0] for p in parts])
        cam = torch.cat([p[1] for p in parts])  # [B,1,H,W] in [0,1], min-max per image
        heat = normalize_heatmap(cam, mode="max", threshold=percentile_threshold(cam, self.cfg.ahr_percentile))
        return logits, heat.clamp(0.0, 1.0)

    def _gradcam_pp(self, net: ResidualClassifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk: → (logits [b] fp32, Grad-CAM++ [b,1,H,W] in [0,1]) with hooks released."""
        # Imported here, not at the top: the library takes seconds to load.
        from pytorch_grad_cam import GradCAMPlusPlus
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        was_training = net.training
        with torch.inference_mode(False), torch.enable_grad(), \
                torch.autocast(x.device.type, enabled=False):
            mean, std = self.mean.clone().float(), self.std.clone().float()  # normal tensors, as x below
            inp = ((x.detach().clone().float() - mean) / std).requires_grad_(True)  # [b,3,H,W] normalised
            targets = [ClassifierOutputTarget(0)] * len(inp)
            with GradCAMPlusPlus(model=net, target_layers=[self.target_layer(net)]) as gradcam:
                maps = gradcam(input_tensor=inp, targets=targets)  # numpy [b,H,W]
                logits = gradcam.outputs.detach()[:, 0].float()  # [b]
        net.zero_grad(set_to_none=True)
        net.train(was_training)
        return logits, torch.from_numpy(maps).to(x.device)[:, None]


@register("wsol_crack")
def build_wsol_crack(cfg: ModelConfig) -> WSOLCrack:
    """WSOL-Crack [12] stand-in: residual classifier + thresholded Grad-CAM++ heatmaps."""
    return WSOLCrack(cfg)
