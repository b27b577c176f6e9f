"""One inference path: predict, evaluate-localization and the experiment give the same map.

Each test here failed before the refactor that made `Predictor` + `InferenceConfig` the one path:
`predict` resized small images while `evaluate-localization` padded them, the gate defaults
differed, `evaluate-localization --backend onnx` crashed, and the ONNX cache ignored the tile.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from PIL import Image

from crackloc.cli import main
from crackloc.config import InferenceConfig
from crackloc.data.synthetic import make_crack_image
from crackloc.evaluation import localize_run
from crackloc.evaluation.localization import PxAPEvaluator
from crackloc.experiments.runner import ExperimentSpec, localize
from crackloc.inference.predictor import Predictor
from crackloc.tensors import resolve_precision

TILE = 112  # the tiny preset's image size
SIZES = {"small": (80, 100), "tile": (TILE, TILE), "large": (150, 230)}  # (H, W)


@pytest.fixture(scope="module")
def mask_folder(tmp_path_factory) -> Path:
    """images/ + masks/ with one image smaller than a tile, one of exactly a tile, one larger."""
    root = tmp_path_factory.mktemp("masks")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        img, mask = make_crack_image(h, w, crack=True, seed=20 + i, width=2.5)
        Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(root / "images" / f"{name}.png")
        Image.fromarray(mask[0].numpy().astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")
    return root


@pytest.fixture()
def captured(monkeypatch) -> dict[tuple[int, int], torch.Tensor]:
    """Every heatmap a localisation evaluator sees, by its (H, W)."""
    maps: dict[tuple[int, int], torch.Tensor] = {}
    original = PxAPEvaluator.accumulate

    def spy(self, heatmap, mask):
        maps[tuple(heatmap.shape)] = heatmap.clone()
        return original(self, heatmap, mask)

    monkeypatch.setattr(PxAPEvaluator, "accumulate", spy)
    return maps


def _predict_maps(ckpt: Path, images: Path, out: Path, *extra: str) -> dict[tuple[int, int], np.ndarray]:
    assert main(["predict", str(images), "--checkpoint", str(ckpt), "--out", str(out), "--tile", str(TILE),
                 *extra]) == 0
    maps = {}
    for line in (out / "predictions.jsonl").read_text().splitlines():
        rec = json.loads(line)
        arr = np.asarray(Image.open(out / rec["heatmap_png"]))
        maps[arr.shape] = arr
    return maps


def test_predict_evaluate_and_experiment_give_the_same_map(tiny_run, mask_folder, tmp_path, captured):
    ckpt = tiny_run / "model.pt"
    predicted = _predict_maps(ckpt, mask_folder / "images", tmp_path / "pred")
    assert set(predicted) == set(SIZES.values())
    assert main(["evaluate-localization", "--data", str(mask_folder), "--checkpoint", str(ckpt),
                 "--out", str(tmp_path / "loc"), "--tile", str(TILE), "--dev-fraction", "0.34"]) in (0, 1)
    from_eval = dict(captured)
    captured.clear()
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").symlink_to(ckpt)
    localize(run, ExperimentSpec(out=tmp_path / "exp", masks=str(mask_folder), max_images=None,
                                 loc_scale=1.0, loc_gate=True), image_size=TILE, progress=False)
    from_experiment = dict(captured)
    for size in SIZES.values():
        assert torch.equal(from_eval[size], from_experiment[size]), size
        as_png = (from_eval[size].numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(as_png, predicted[size]), size
    saved = json.loads((tmp_path / "loc" / "metrics.json").read_text())
    ran = InferenceConfig(tile=TILE, precision=resolve_precision("auto"))  # the settings that ran are recorded
    assert saved["gate"] is True and saved["inference"] == dataclasses.asdict(ran)


def test_small_images_are_padded_not_stretched(tiny_run):
    """An image smaller than a tile keeps its pixel scale: the map of its top-left corner does not
    depend on how much image lies beyond the tile (stretching would change it)."""
    pred = Predictor(tiny_run / "model.pt", InferenceConfig(tile=TILE, precision="32", gate=False, line_guide=0.0))
    img, _ = make_crack_image(100, 100, crack=True, seed=3, width=2.5)
    image = (img * 255).round().to(torch.uint8)  # [3,100,100]
    result = pred.predict(image)
    assert result.heatmap.shape == (100, 100) and result.n_tiles == 1
    padded = torch.nn.functional.pad(image.float()[None], (0, TILE - 100, 0, TILE - 100), mode="reflect")[0]
    direct = pred.predict(padded.round().to(torch.uint8))
    assert torch.allclose(result.heatmap, direct.heatmap[:100, :100], atol=1e-5)


def test_gate_is_on_by_default_everywhere():
    from crackloc.cli import build_parser

    assert InferenceConfig().gate is True
    for cmd in (["predict", "x", "--out", "o"], ["evaluate-localization", "--data", "d", "--out", "o"]):
        assert vars(build_parser().parse_args(cmd))["inference.gate"] is True


def test_evaluate_localization_runs_on_onnx_and_matches_torch(model_file, mask_folder, tmp_path):
    common = ["evaluate-localization", "--data", str(mask_folder), "--checkpoint", str(model_file),
              "--tile", "64", "--precision", "32", "--dev-fraction", "0.34", "--cache-dir", str(tmp_path / "c")]
    assert main([*common, "--out", str(tmp_path / "torch")]) in (0, 1)
    assert main([*common, "--out", str(tmp_path / "onnx"), "--backend", "onnx"]) in (0, 1)
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("torch", "onnx"))
    assert b["inference"]["backend"] == "onnx"
    for key in ("pxap", "pxap_all", "ods_f1"):
        assert b[key] == pytest.approx(a[key], abs=2e-3), key


def test_onnx_cache_follows_the_tile_size(model_file, tmp_path):
    """After a run at --tile 96, a default-tile run must not reuse that export."""
    image = torch.randint(0, 256, (3, 130, 150), dtype=torch.uint8)
    small = Predictor(model_file, InferenceConfig(tile=96, backend="onnx"), cache_dir=tmp_path)
    default = Predictor(model_file, InferenceConfig(tile=64, backend="onnx"), cache_dir=tmp_path)
    assert small.model.path != default.model.path
    assert small.predict(image).heatmap.shape == default.predict(image).heatmap.shape == (130, 150)


def test_pseudo_masks_follow_train_precision(model_file):
    from crackloc.models.checkpoint import load_model
    from crackloc.tensors import to_input
    from crackloc.training.pseudo import teacher_cams

    teacher = load_model(model_file)[0]
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    fp32 = teacher_cams(teacher, images, precision="32")
    with torch.no_grad():
        assert torch.equal(fp32, teacher.raw_cam(to_input(images, channels_last=False)).float())
    assert not torch.equal(fp32, teacher_cams(teacher, images, precision="bf16"))


def test_numpy_pin_matches_the_code():
    """The code uses np.bitwise_count (NumPy ≥ 2.0); the install must not allow 1.x."""
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    pin = next(d for d in project["dependencies"] if d.startswith("numpy"))
    assert ">=2" in pin.replace(" ", ""), pin
    assert hasattr(np, "bitwise_count")


def test_train_checks_the_split_once_and_builds_the_student_once(crack_folder, tmp_path, monkeypatch):
    from crackloc.data import manifest
    from crackloc.models import registry

    checks, builds = [], []
    check = manifest.check_manifest
    monkeypatch.setattr(manifest, "check_manifest", lambda rows, **kw: checks.append(1) or check(rows, **kw))
    builder = registry.MODELS["crackloc"]
    monkeypatch.setitem(registry.MODELS, "crackloc", lambda cfg: builds.append(1) or builder(cfg))
    assert main(["train", "--data", str(crack_folder), "--preset", "tiny", "--out", str(tmp_path / "r"),
                 "--pretrained", "none", "--epochs", "1", "--teacher-epochs", "1", "--max-train", "16"]) == 0
    assert len(checks) == 1  # train checks the split; the evaluation that follows does not again
    assert len(builds) == 2  # the student once for training, once when evaluation loads model.pt


def test_score_folder_is_the_loop_of_evaluate_localization(model_file, mask_folder):
    from crackloc.data.masks import MaskDataset

    pred = Predictor(model_file, InferenceConfig(tile=64, precision="32"))
    ds = MaskDataset(mask_folder)
    res = localize_run.score_folder(pred, ds, ds.stems, tolerance=2)
    assert res["n_images"] == 3 and 0.0 <= res["pxap"] <= 1.0 and 0.0 <= res["best_f1"] <= 1.0


def test_views_run_on_onnx_and_matches_torch(model_file, tmp_path):
    """--views 2 runs on either backend alike: the same averaged map from torch fp32 and ONNX."""
    image = torch.randint(0, 256, (3, 130, 150), dtype=torch.uint8)
    cfg = InferenceConfig(tile=64, precision="32", views=2)
    torch_map = Predictor(model_file, cfg).predict(image)
    onnx_map = Predictor(model_file, dataclasses.replace(cfg, backend="onnx"), cache_dir=tmp_path).predict(image)
    plain = Predictor(model_file, dataclasses.replace(cfg, views=1)).predict(image)
    assert torch.allclose(torch_map.heatmap, onnx_map.heatmap, atol=2e-3)
    assert torch_map.probability == pytest.approx(plain.probability, abs=1e-6)  # decisions: the plain windows'
    assert not torch.allclose(torch_map.heatmap, plain.heatmap, atol=1e-3)


def test_eight_views_make_the_map_follow_every_turn_and_mirror(model_file):
    """--views 8 averages all 8 symmetries of the square: mapping a turned photo gives the turned map."""
    image = torch.randint(0, 256, (3, 90, 140), dtype=torch.uint8)
    pred = Predictor(model_file, InferenceConfig(tile=64, precision="32", views=8))
    base = pred.predict(image).heatmap  # [90,140]
    turned = pred.predict(image.rot90(1, (-2, -1)).contiguous()).heatmap  # [140,90]
    mirrored = pred.predict(image.flip(-1)).heatmap
    assert turned.shape == (140, 90) and float(base.min()) >= 0.0 and float(base.max()) <= 1.0
    assert torch.allclose(turned, base.rot90(1, (-2, -1)), atol=1e-4)
    assert torch.allclose(mirrored, base.flip(-1), atol=1e-4)
    one = Predictor(model_file, InferenceConfig(tile=64, precision="32")).predict(image).heatmap
    assert not torch.allclose(one.rot90(1, (-2, -1)),
                              Predictor(model_file, InferenceConfig(tile=64, precision="32"))
                              .predict(image.rot90(1, (-2, -1)).contiguous()).heatmap, atol=1e-3)


def test_scale_spread_averages_three_scales(model_file, monkeypatch):
    """--scale-spread 1.5 maps at scale ÷ 1.5, scale and scale × 1.5; the map keeps the photo's size."""
    from crackloc.inference import predictor as predictor_module

    seen: list[float] = []
    real = predictor_module.predict_tiled
    monkeypatch.setattr(predictor_module, "predict_tiled", lambda *a, **k: seen.append(k["scale"]) or real(*a, **k))
    image = torch.randint(0, 256, (3, 100, 120), dtype=torch.uint8)
    pred = Predictor(model_file, InferenceConfig(tile=64, precision="32", scale=1.5, scale_spread=1.5, views=2))
    res = pred.predict(image)
    assert sorted(seen) == pytest.approx([1.0, 1.0, 1.5, 1.5, 2.25, 2.25]) and res.scale == 1.5
    assert res.heatmap.shape == (100, 120) and float(res.heatmap.max()) <= 1.0


def test_experiment_folders_recorded_with_half_turn_still_load():
    """experiment.json written before --views replaced --half-turn: the figures read it as views 1 / 2."""
    from crackloc.experiments.figures import inference_config

    old = {k: v for k, v in dataclasses.asdict(InferenceConfig()).items() if k not in ("views", "scale_spread")}
    assert inference_config({"inference": {**old, "half_turn": True}}, tile=TILE).views == 2
    assert inference_config({"inference": {**old, "half_turn": False}}, tile=TILE).views == 1
