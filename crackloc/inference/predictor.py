"""Predict crack probability + full-resolution heatmap for images of any size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from crackloc.config import DEFAULT_AHR_PERCENTILE
from crackloc.errors import CracklocError
from crackloc.evaluation.classification import autocast_for

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_MODEL = ASSETS / "crackloc_resnet18.pt"


@dataclass
class Prediction:
    """Crack probability of the image and its heatmap [H,W] in [0,1] at input resolution."""

    probability: float
    heatmap: torch.Tensor
    n_tiles: int


def default_checkpoint() -> Path:
    """The model shipped inside the package."""
    if not BUNDLED_MODEL.is_file():
        raise CracklocError("no --checkpoint given and no bundled model in this installation")
    return BUNDLED_MODEL


class Predictor:
    """Wraps a model file (torch or ONNX Runtime) for patches and large photos alike.

    An image no larger than one tile is resized to the tile and run once; a larger one is
    tiled (`crackloc.inference.tiling.predict_tiled`) and the tile maps are blended.
    """

    def __init__(self, checkpoint: str | Path | None = None, *, backend: str = "torch", device: str = "cpu",
                 precision: str = "bf16", tile: int = 224, overlap: float = 0.25, scale: float = 1.0,
                 gate: bool = True, batch_size: int = 16, threshold: float | None = None,
                 ahr_percentile: float | None = DEFAULT_AHR_PERCENTILE, compile: bool = False) -> None:
        from crackloc.models.checkpoint import load_model

        self.checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
        self.model, payload = load_model(self.checkpoint, device=device)
        self.meta = payload.get("meta", {})
        self.tile, self.overlap, self.scale, self.gate, self.batch_size = tile, overlap, scale, gate, batch_size
        self.threshold = threshold if threshold is not None else float(self.meta.get("val_threshold", 0.5))
        if ahr_percentile is not None and getattr(self.model, "ahr", None) is not None:
            if not 0 <= ahr_percentile < 100:
                raise CracklocError(f"--ahr-percentile must be in [0, 100), got {ahr_percentile}")
            self.model.ahr.percentile = ahr_percentile
        if backend == "onnx":
            self.model = self._onnx_model()
            precision = "32"
        elif backend != "torch":
            raise CracklocError(f"unknown backend {backend!r} (torch or onnx)")
        elif precision == "bf16":
            self.model = self.model.to(memory_format=torch.channels_last)
        if compile and backend == "torch":
            self.model = torch.compile(self.model)  # ~20 s once; pays off over many tiles/images
        self.device, self.precision = torch.device(device), precision

    def _onnx_model(self):
        from crackloc.inference.export import OnnxPredictor, export_onnx

        onnx_path = self.checkpoint.with_suffix(".onnx")
        if not onnx_path.is_file() or onnx_path.stat().st_mtime < self.checkpoint.stat().st_mtime:
            cache = Path.home() / ".cache" / "crackloc"
            onnx_path = cache / f"{self.checkpoint.stem}-{int(self.checkpoint.stat().st_mtime)}.onnx"
            if not onnx_path.is_file():
                export_onnx(self.model, onnx_path, image_size=self.tile)
        return OnnxPredictor(onnx_path)

    @torch.inference_mode()
    def predict(self, image: torch.Tensor) -> Prediction:
        """uint8 [3,H,W] → Prediction (heatmap [H,W])."""
        h, w = image.shape[-2:]
        if round(h * self.scale) <= self.tile * 1.1 and round(w * self.scale) <= self.tile * 1.1:
            x = image[None].float().div(255.0)  # [1,3,H,W]
            x = F.interpolate(x, size=(self.tile, self.tile), mode="bilinear", antialias=True, align_corners=False)
            if self.precision == "bf16":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(self.device, self.precision):
                logits, heat = self.model(x.to(self.device))
            heat = F.interpolate(heat.float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            prob = float(torch.sigmoid(logits.float())[0])
            if self.gate:
                heat = heat * prob
            return Prediction(prob, heat.clamp(0, 1).cpu(), 1)
        from crackloc.inference.tiling import predict_tiled

        res = predict_tiled(self.model, image, tile=self.tile, overlap=self.overlap, scale=self.scale,
                            batch_size=self.batch_size, gate=self.gate, device=str(self.device),
                            amp_dtype=torch.bfloat16 if self.precision == "bf16" else None,
                            channels_last=self.precision == "bf16")
        return Prediction(float(res.probability), res.heatmap.cpu(), len(res.tile_probs))


def heatmap_stats(heatmap: torch.Tensor, *, threshold: float = 0.5) -> dict:
    """Summary numbers of a heatmap [H,W]."""
    return {"mean": round(float(heatmap.mean()), 5), "max": round(float(heatmap.max()), 5),
            "area_fraction_above": round(float((heatmap >= threshold).float().mean()), 5),
            "map_threshold": threshold}


def colorize(heatmap: torch.Tensor) -> np.ndarray:
    """Heatmap [H,W] in [0,1] → uint8 HxWx3 (matplotlib 'inferno')."""
    from matplotlib import colormaps

    return (colormaps["inferno"](heatmap.numpy())[..., :3] * 255).astype(np.uint8)


def overlay(image: torch.Tensor, heatmap: torch.Tensor, *, alpha: float = 0.55, floor: float = 0.2) -> np.ndarray:
    """Blend a colour heatmap over the image where the map exceeds `floor`: → uint8 HxWx3."""
    rgb = image.permute(1, 2, 0).numpy().astype(np.float32)
    heat = heatmap.numpy()
    color = colorize(heatmap).astype(np.float32)
    a = (alpha * np.clip((heat - floor) / max(1 - floor, 1e-6), 0, 1))[..., None]
    return (rgb * (1 - a) + color * a).round().astype(np.uint8)
