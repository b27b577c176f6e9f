"""TS-CAM: token semantic coupled attention maps (Gao et al., ICCV 2021; the paper's [21]).

A small vision transformer (timm `deit_tiny_patch16_224`, `dynamic_img_size=True`, so any
input whose sides are multiples of 16 works; other sizes raise a `CracklocError`). The
patch tokens, reshaped to a map, go through a 1×1 conv to a crack map (semantic-aware
map); GAP of that map is the logit. The class token's attention to the patches, averaged
over heads and over the last `attention_blocks` blocks (all 12 by default, as TS-CAM),
is the semantic-agnostic map; the heatmap is their product, normalised to [0,1].

The attention rows are recomputed from each block's `qkv` output (captured with forward
hooks that are removed after every call), because timm's fused attention does not expose
its weights. Weights: random init ('none', or 'auto' with a warning: nothing is downloaded)
or a timm DeiT-Tiny state dict given as a path.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from crackloc.config import ModelConfig
from crackloc.errors import CracklocError
from crackloc.models.backbone import IMAGENET_MEAN, IMAGENET_STD
from crackloc.models.base import LocalizationModel
from crackloc.models.refine import normalize_heatmap
from crackloc.models.registry import register
from crackloc.models.weights import load_weights

VIT_NAME = "deit_tiny_patch16_224"
PATCH = 16


def cls_attention(attn: nn.Module, qkv: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Class-token → patch attention of one timm `Attention` from its qkv output.

    qkv [B,N,3·D] (N = prefix + patch tokens) → softmax row of the class token over all
    tokens, restricted to the patches: [B,heads,N − num_prefix].
    """
    b, n, _ = qkv.shape
    q, k, _ = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # [B,h,N,d] each
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q[:, :, :1].float() * attn.scale) @ k.float().transpose(-2, -1)  # [B,h,1,N]
    return logits.softmax(dim=-1)[:, :, 0, num_prefix:]  # [B,h,N−p]


class TSCAM(LocalizationModel):
    """DeiT-Tiny → patch-token crack map ⊙ class-token attention (see the module notes)."""

    def __init__(self, cfg: ModelConfig, *, attention_blocks: int | None = None) -> None:
        import timm

        os.environ["HF_HUB_OFFLINE"] = "1"
        super().__init__(mean=IMAGENET_MEAN, std=IMAGENET_STD, uses_pseudo_masks=cfg.uses_pseudo_masks)
        self.cell_phase = 0.5  # 2×2 pools / 16×16 patches: a cell is centred on the pixels it pools
        self.cfg = cfg
        self.vit = timm.create_model(VIT_NAME, pretrained=False, num_classes=0, dynamic_img_size=True)
        # 'auto': nothing is cached for DeiT-Tiny → random init (with a warning)
        self.pretrained_source = load_weights(self.vit, cfg.pretrained, candidates=[], what=VIT_NAME)
        self.semantic = nn.Conv2d(self.vit.embed_dim, 1, kernel_size=1)  # tokens → crack map
        self.attention_blocks = attention_blocks or len(self.vit.blocks)

    def tokens_and_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,3,H,W] in [0,1] → (patch tokens [B,D,H/16,W/16], attention [B,1,H/16,W/16])."""
        h, w = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        if x.shape[-2] % PATCH or x.shape[-1] % PATCH:
            raise CracklocError(f"ts_cam needs input sides divisible by {PATCH}, got "
                                f"{x.shape[-2]}×{x.shape[-1]} (use --tile/--image-size multiples of {PATCH})")
        blocks = list(self.vit.blocks)[-self.attention_blocks:]
        captured: list[torch.Tensor] = []
        handles = [b.attn.qkv.register_forward_hook(lambda m, i, o: captured.append(o)) for b in blocks]
        try:
            tokens = self.vit.forward_features(self.normalize(x))  # [B,p+N,D]
        finally:
            for handle in handles:
                handle.remove()
        p = self.vit.num_prefix_tokens
        rows = [cls_attention(b.attn, qkv, p).mean(dim=1) for b, qkv in zip(blocks, captured, strict=True)]
        attention = torch.stack(rows).mean(dim=0).view(-1, 1, h, w)  # [B,1,h,w]
        patches = tokens[:, p:].transpose(1, 2).reshape(len(x), -1, h, w)  # [B,D,h,w]
        return patches, attention

    def forward_lowres(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches, attention = self.tokens_and_attention(x)
        semantic = self.semantic(patches)  # [B,1,h,w]
        logits = semantic.mean(dim=(2, 3)).squeeze(1)  # [B]
        coupled = torch.relu(semantic.float()) * attention  # [B,1,h,w]
        return logits, normalize_heatmap(coupled, mode="max")


@register("ts_cam")
def build_ts_cam(cfg: ModelConfig) -> TSCAM:
    """TS-CAM [21]: DeiT-Tiny semantic token maps re-allocated by class-token attention."""
    return TSCAM(cfg)
