"""Stage 2: a full-resolution crack segmenter trained on refined pseudo-labels (image labels only).

Encoder: the backbone's four stages (ResNet-18: strides 4, 8, 16, 32), initialised from a
stage-1 model file (`ModelConfig.init_from`) or ImageNet weights. Decoder: an FPN-style
top-down path to stride 4, then to stride 2 where it meets a small full-resolution branch on the
image itself (thin cracks are 1–3 px wide: the stem's stride 4 alone would blur them), fused by a
1×1 conv, and a 3×3 head: the crack map at stride 2, upsampled bilinearly to the input. The
decoder is kept narrow (32 channels at stride 4, 1×1 fusion at stride 2): at these resolutions
memory traffic, not arithmetic, sets the time per tile. Every resampling keeps a
cell over the pixels it describes (`crackloc.tensors.upsample_cells`), so thin cracks are not
drawn a few pixels off. The image-level logit
is GAP → FC on the deepest stage (the stage-1 classifier's head, so decisions start where
stage 1 left them).

Same contract as every model: `(logits [B], heatmap [B,1,H,W] in [0,1])`; `forward_dense`
gives the map's logits at input resolution for the pixel loss.
"""

from __future__ import annotations

import torch
from torch import nn

from crackloc.config import ModelConfig
from crackloc.models.backbone import build_backbone
from crackloc.models.base import LocalizationModel
from crackloc.models.heads import CamHead
from crackloc.models.registry import register
from crackloc.tensors import upsample_cells

DECODER_CHANNELS = 64  # FPN laterals
SMOOTH_CHANNELS = 32  # the stride-4 map passed up to stride 2
FINE_CHANNELS = 16
FUSED_CHANNELS = 32
EMPTY_LOGIT = -30.0  # map logit of a window that skipped the decoder (sigmoid ≈ 1e-13)


def conv_bn_relu(cin: int, cout: int, *, stride: int = 1) -> nn.Sequential:
    """3×3 conv → BN → ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class CrackSegNet(LocalizationModel):
    """Encoder (4 stages) → FPN decoder → stride-2 crack map; GAP/FC image logit."""

    uses_pseudo_masks = True
    pseudo_source = "refined"
    dense_training = True
    decode_min_prob: float = 0.0  # inference: skip the decoder for windows below this crack probability

    def __init__(self, cfg: ModelConfig) -> None:
        backbone = build_backbone(cfg.backbone, scales=list(_all_stages(cfg.backbone)), output_stride=32,
                                  pretrained=cfg.pretrained)
        super().__init__(mean=backbone.mean, std=backbone.std, uses_pseudo_masks=cfg.uses_pseudo_masks)
        self.encoder_phase = backbone.cell_phase  # the output map is on the fine branch's grid (phase 0)
        self.cfg = cfg
        self.backbone = backbone
        d = DECODER_CHANNELS
        self.lateral = nn.ModuleList(nn.Conv2d(c, d, 1) for c in backbone.channels)
        self.smooth = conv_bn_relu(d, SMOOTH_CHANNELS)
        self.fine = nn.Sequential(conv_bn_relu(3, FINE_CHANNELS), conv_bn_relu(FINE_CHANNELS, FINE_CHANNELS, stride=2))
        self.fuse = nn.Sequential(nn.Conv2d(SMOOTH_CHANNELS + FINE_CHANNELS, FUSED_CHANNELS, 1, bias=False),
                                  nn.BatchNorm2d(FUSED_CHANNELS), nn.ReLU(inplace=True))
        self.head = nn.Conv2d(FUSED_CHANNELS, 1, 3, padding=1)
        self.fc = CamHead(backbone.channels[-1])
        self.init_source = load_stage1(self, cfg.init_from) if cfg.init_from else "none"

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,3,H,W] in [0,1] → (image logits [B], map logits [B,1,H/2,W/2]).

        With `decode_min_prob` > 0 (inference only; set by the predictor when maps are gated),
        windows whose crack probability is below it skip the decoder and get an empty map: gated,
        their map would weigh less than that probability anyway.
        """
        xn = self.normalize(x)
        feats = self.backbone(xn)  # strides 4, 8, 16, 32
        logits = self.fc.logits(feats[-1])  # [B]
        if self.training or self.decode_min_prob <= 0 or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return logits, self._map(xn, feats)
        keep = torch.sigmoid(logits.float()) >= self.decode_min_prob  # [B]
        if bool(keep.all()):
            return logits, self._map(xn, feats)
        out = xn.new_full((x.shape[0], 1, (x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2), EMPTY_LOGIT)
        if bool(keep.any()):
            out[keep] = self._map(xn[keep], [f[keep] for f in feats]).to(out.dtype)
        return logits, out

    def _map(self, xn: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """Normalised input [B,3,H,W] and encoder stages → map logits [B,1,H/2,W/2]."""
        top = self.lateral[-1](feats[-1])
        p = self.encoder_phase
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1]), strict=True):
            top = lat(f) + upsample_cells(top, tuple(f.shape[-2:]), stride=2, phase=p)  # cells stay on their pixels
        fine = self.fine(xn)  # [B,16,H/2,W/2], cell j on pixel 2j
        # stride-4 cell i sits on pixel 4i + 3p, i.e. fine cell 2i + 1.5p
        up = upsample_cells(self.smooth(top), tuple(fine.shape[-2:]), stride=2, phase=1.5 * p)
        return self.head(self.fuse(torch.cat([up, fine], dim=1)))  # [B,1,H/2,W/2]

    def forward_dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,3,H,W] → (image logits [B], map logits [B,1,H,W]) for the pixel loss."""
        logits, low = self._decode(x)
        return logits, upsample_cells(low.float(), tuple(x.shape[-2:]), stride=2)  # [B,1,H,W]

    def forward_lowres(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, low = self._decode(x)
        return logits, torch.sigmoid(low.float())  # [B], [B,1,H/2,W/2]


def load_stage1(model: CrackSegNet, path: str) -> str:
    """Copy a stage-1 model file's backbone stages and classifier into `model` (shapes must match);
    from a stage-2 file (a self-training round) every weight, decoder included."""
    from crackloc.errors import CracklocError
    from crackloc.models.checkpoint import read_model_file

    payload = read_model_file(path)
    sd, whole = payload["state_dict"], payload["config"].get("name") == model.cfg.name  # same kind: all of it
    own = model.state_dict()
    usable = {k: v.float() for k, v in sd.items() if (whole or k.startswith("backbone.") or k.startswith("fc."))
              and k in own and own[k].shape == v.shape}
    if not any(k.startswith("backbone.") for k in usable):
        raise CracklocError(f"{path}: no backbone weights that fit the {model.cfg.backbone} encoder")
    model.load_state_dict(usable, strict=False)
    return str(path)


def _all_stages(name: str) -> tuple[str, ...]:
    from crackloc.models.backbone import backbone_spec

    return tuple(backbone_spec(name).stages)


@register("crackseg")
def build_crackseg(cfg: ModelConfig) -> CrackSegNet:
    """Stage 2: full-resolution crack segmenter trained on refined pseudo-labels."""
    return CrackSegNet(cfg)
