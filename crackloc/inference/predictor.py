"""One inference path: a model file + an `InferenceConfig` → crack probability and full-size heatmap.

Every consumer (`predict`, `evaluate-localization`, the experiment runner, figures and
benchmarks) builds a `Predictor` from an `InferenceConfig`, and every image, whatever its
size, goes through the same tiling (`crackloc.inference.tiling.predict_tiled`): an image
smaller than a tile is padded, never stretched, so one image and one config give one map.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crackloc.config import InferenceConfig, from_dict
from crackloc.errors import CracklocError
from crackloc.inference.autoscale import auto_scale
from crackloc.inference.guide import guide_map, line_evidence
from crackloc.inference.tiling import predict_tiled
from crackloc.models.checkpoint import load_model
from crackloc.tensors import MAP_ALIGNMENT, MASK_LEVEL, resolve_precision

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# Gated maps: a window below this crack probability may skip the map decoder (stage 2), since its
# gated map weighs less than that: < 0.01 of a map in [0, 1], far below any decision threshold.
GATED_SKIP_PROB = 0.01
BUNDLED_MODEL = ASSETS / "crackloc_stage2.pt"  # the default: stage 2, pixel masks (docs/model_card.md)
STAGE1_MODEL = ASSETS / "crackloc_resnet18.pt"  # the paper's model; stage 2 was initialised from it


# The photo's views averaged by `InferenceConfig.views`, in order: (into the view, back to the photo),
# on tensors [...,H,W]. The first two cancel a map shift in any direction; eight are all the
# symmetries of the square (the dihedral group), so the averaged map is equivariant to them.
VIEWS: tuple[tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]], ...] = (
    (lambda x: x, lambda m: m),
    (lambda x: x.flip(-2, -1), lambda m: m.flip(-2, -1)),  # turned 180°
    (lambda x: x.flip(-1), lambda m: m.flip(-1)),  # mirrored left-right
    (lambda x: x.flip(-2), lambda m: m.flip(-2)),  # mirrored top-bottom
    (lambda x: x.transpose(-2, -1), lambda m: m.transpose(-2, -1)),  # transposed
    (lambda x: x.flip(-2, -1).transpose(-2, -1), lambda m: m.transpose(-2, -1).flip(-2, -1)),  # anti-transposed
    (lambda x: x.rot90(1, (-2, -1)), lambda m: m.rot90(-1, (-2, -1))),  # turned 90°
    (lambda x: x.rot90(-1, (-2, -1)), lambda m: m.rot90(1, (-2, -1))),  # turned 270°
)


def map_scales(scale: float, spread: float) -> list[float]:
    """The scales one photo is mapped at: `scale`, and with a spread > 1 also scale ÷ and × spread."""
    return [scale] if spread == 1 else [scale, scale / spread, scale * spread]


@dataclass
class Prediction:
    """Crack probability of the image and its heatmap [H,W] in [0,1] at input resolution."""

    probability: float
    heatmap: torch.Tensor
    n_tiles: int
    scale: float = 1.0  # the resize factor used (chosen per photo with `auto_scale`)


def default_checkpoint() -> Path:
    """The model shipped inside the package."""
    if not BUNDLED_MODEL.is_file():
        raise CracklocError("no --checkpoint given and no bundled model in this installation")
    return BUNDLED_MODEL


def decision_threshold(meta: dict, path: Path) -> float:
    """The model file's validation threshold (`meta.val_threshold`, default 0.5), checked."""
    value = meta.get("val_threshold", 0.5)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise CracklocError(f"{path}: damaged model file (meta.val_threshold must be a number in [0, 1], "
                            f"got {value!r})")
    return float(value)


def model_overrides(cfg: InferenceConfig) -> dict:
    """Model-config fields an inference config sets: the AHR cut (for models that have one)."""
    return {} if cfg.ahr_percentile is None else {"ahr_percentile": float(cfg.ahr_percentile)}


class Predictor:
    """A model file (torch or ONNX Runtime) run on images of any size by one `InferenceConfig`.

    Args:
        checkpoint: crackloc model file (default: the bundled model).
        cfg: How to run it (tiling, scale, gate, AHR cut, precision, backend, batch size).
        threshold: Decision threshold on the crack probability (default: the file's
            validation threshold).
        cache_dir: Where ONNX exports are cached (default $CRACKLOC_CACHE or ~/.cache/crackloc).
    """

    def __init__(self, checkpoint: str | Path | None = None, cfg: InferenceConfig | None = None, *,
                 threshold: float | None = None, cache_dir: str | Path | None = None) -> None:
        cfg = from_dict(InferenceConfig, dataclasses.asdict(cfg or InferenceConfig()))  # validates ranges
        self.checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
        model, payload = load_model(self.checkpoint, device=cfg.device, overrides=model_overrides(cfg))
        self.meta = payload.get("meta", {})
        self.threshold = threshold if threshold is not None else decision_threshold(self.meta, self.checkpoint)
        if cfg.backend == "onnx":
            model = self._onnx_model(model, payload, cfg, cache_dir)
        self._setup(model, cfg)

    @classmethod
    def from_model(cls, model: torch.nn.Module, cfg: InferenceConfig | None = None, *,
                   threshold: float = 0.5, name: str = "in-memory model") -> Predictor:
        """A predictor for a model already in memory (training-free maps, tests); torch backend only."""
        cfg = from_dict(InferenceConfig, dataclasses.asdict(cfg or InferenceConfig()))
        if cfg.backend != "torch":
            raise CracklocError("an in-memory model runs on the torch backend; export it for ONNX")
        self = cls.__new__(cls)
        self.checkpoint, self.meta, self.threshold = Path(name), {}, float(threshold)
        self._setup(model.to(cfg.device).eval(), cfg)
        return self

    def _setup(self, model, cfg: InferenceConfig) -> None:
        """Memory format and compilation as `cfg` asks; ONNX models run in fp32 as they are."""
        if not isinstance(model, torch.nn.Module):
            cfg = dataclasses.replace(cfg, precision="32", compile=False)
        else:  # `cfg.precision` from here on is the one that runs ('auto' resolved for the device)
            cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, cfg.device))
        if cfg.precision == "bf16":
            model = model.to(memory_format=torch.channels_last)
        if isinstance(model, torch.nn.Module) and hasattr(model, "decode_min_prob"):
            model.decode_min_prob = GATED_SKIP_PROB if cfg.gate else 0.0
        if cfg.compile:
            quiet_compiler()
            model = torch.compile(model)  # ~20 s once; pays off over many tiles/images
        self.cfg, self.model, self.device = cfg, model, torch.device(cfg.device)

    def _onnx_model(self, model: torch.nn.Module, payload: dict, cfg: InferenceConfig,
                    cache_dir: str | Path | None):
        """The model exported for `cfg.tile` (cached by file content and baked-in settings)."""
        from crackloc.inference.export import OnnxPredictor, cached_onnx

        settings = {"ahr_percentile": getattr(payload["model_config"], "ahr_percentile", None),
                    "map_alignment": MAP_ALIGNMENT}
        path = cached_onnx(model, self.checkpoint, image_size=cfg.tile, settings=settings, cache=cache_dir)
        try:
            return OnnxPredictor(path)
        except CracklocError:  # a damaged cache entry (a disk that filled up, a hand edit): made again, once
            path.unlink(missing_ok=True)
            return OnnxPredictor(cached_onnx(model, self.checkpoint, image_size=cfg.tile, settings=settings,
                                             cache=cache_dir))

    @property
    def model_id(self) -> str:
        """Names the model in records: the first 16 hex digits of the model file's sha256."""
        if not hasattr(self, "_model_id"):
            from crackloc.io import file_digest

            on_disk = self.checkpoint.is_file()
            self._model_id = file_digest(self.checkpoint, what="model file")[:16] if on_disk \
                else f"in-memory:{self.checkpoint}"
        return self._model_id

    @torch.inference_mode()
    def predict(self, image: torch.Tensor, *, line_guide: bool = True) -> Prediction:
        """uint8 [3,H,W] → Prediction (heatmap [H,W], probability = max over windows).

        `line_guide=False` skips the configured line guide (for records only: the mask and the
        probability are the same either way).
        """
        cfg = self.cfg
        scale = auto_scale(image) if cfg.auto_scale else cfg.scale
        res = self._tiled(image, scale)  # the decision and the first map: the photo as it is
        heatmap = res.heatmap  # [H,W]
        passes = [(s, v) for s in map_scales(scale, cfg.scale_spread) for v in range(cfg.views)][1:]
        for s, v in passes:  # other views and scales, each mapped and turned back: averaged
            into, back = VIEWS[v]
            heatmap = heatmap + back(self._tiled(into(image).contiguous(), s).heatmap)  # [H,W]
        heatmap = heatmap / (len(passes) + 1)
        if line_guide and cfg.line_guide > 0 and bool(heatmap.any()):  # onto the photo's own dark-line pixels (an all-0 map stays 0)
            heatmap = guide_map(heatmap, line_evidence(image.to(heatmap.device), scale=scale), weight=cfg.line_guide)
        if not math.isfinite(res.probability) or not bool(torch.isfinite(heatmap).all()):
            raise CracklocError(f"{self.checkpoint}: the model returned NaN or infinite values "
                                "(damaged weights?)")
        return Prediction(float(res.probability), heatmap.cpu(), len(res.tile_probs), scale=scale)

    def _tiled(self, image: torch.Tensor, scale: float):
        """One tiled pass of the model over the image at `scale` (`predict_tiled`)."""
        cfg = self.cfg
        return predict_tiled(self.model, image, tile=cfg.tile, overlap=cfg.overlap, scale=scale,
                             batch_size=cfg.batch_size, gate=cfg.gate, device=self.device,
                             amp_dtype=torch.bfloat16 if cfg.precision == "bf16" else None,
                             channels_last=cfg.precision == "bf16")


def quiet_compiler() -> None:
    """Keep `--compile` to errors: the gated decoder's data-dependent branch is a graph break by
    design, and torch printed a page of advice about it (and about CUDA on CPU-only machines)."""
    import logging

    for name in ("torch._dynamo", "torch._inductor", "torch.utils.cpp_extension"):
        logging.getLogger(name).setLevel(logging.ERROR)


def heatmap_stats(heatmap: torch.Tensor, *, threshold: float = MASK_LEVEL) -> dict:
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
