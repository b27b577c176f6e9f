"""Stage 2: pseudo-label refinement returns the crack's pixels; a tiny segmenter learns the fixture."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crackloc.config import ModelConfig, TrainConfig
from crackloc.data.dataset import DecodedSplit
from crackloc.data.synthetic import make_crack_image, make_crack_set
from crackloc.tensors import predict_batches
from crackloc.training.fit import fit_model
from crackloc.training.refine_labels import (
    IGNORE,
    RefineConfig,
    otsu_threshold,
    refine_pseudo_labels,
)


def _coarse(masks: torch.Tensor, cells: int) -> torch.Tensor:
    """What a stage-1 map looks like: the mask averaged on a cells×cells grid, upsampled, max → 1."""
    coarse = F.interpolate(F.adaptive_avg_pool2d(masks.float(), cells), size=masks.shape[-2:], mode="bilinear",
                           align_corners=False)
    return coarse / coarse.flatten(1).amax(1).clamp(min=1e-6).view(-1, 1, 1, 1)


def test_otsu_splits_two_groups():
    values = torch.cat([torch.full((100,), 0.1), torch.full((50,), 0.8)])
    assert 0.1 <= otsu_threshold(values) < 0.8


def test_refinement_returns_the_cracks_pixels():
    """A 14×14 blob of stage 1 plus the image's dark thin structure → the drawn crack (IoU ≥ 0.8)."""
    ious = []
    for seed in range(6):
        img, mask = make_crack_image(224, 224, crack=True, seed=seed, width=12)
        images = (img * 255).round().to(torch.uint8)[None]
        labels = refine_pseudo_labels(images, torch.tensor([1.0]), _coarse(mask[None], 14),
                                      cfg=RefineConfig(crack_width=12))
        crack, truth = labels[0, 0] == 1, mask[0] > 0
        ious.append(float((crack & truth).sum() / (crack | truth).sum()))
        assert not bool((labels[0, 0][truth] == 0).any())  # no crack pixel is called background
    assert min(ious) >= 0.8, ious
    negatives = refine_pseudo_labels(images, torch.tensor([0.0]), _coarse(mask[None], 14))
    assert int(negatives.max()) == 0  # crack-free patches are all background


def test_tiny_stage2_learns_the_fixture(tmp_path):
    torch.manual_seed(0)

    def split(n: int, seed: int) -> tuple[DecodedSplit, torch.Tensor]:
        images, labels, masks = make_crack_set(n, size=64, seed=seed, width=2.5)
        return DecodedSplit(images, labels, [str(i) for i in range(n)]), masks

    (train, train_masks), (val, val_masks), (test, test_masks) = split(96, 1), split(16, 2), split(32, 3)
    pseudo = refine_pseudo_labels(train.images, train.labels, _coarse(train_masks, 4),
                                  cfg=RefineConfig(crack_width=2.5))
    assert int(((pseudo == 1) | (pseudo == IGNORE) | (pseudo == 0)).all())
    cfg = TrainConfig(epochs=30, batch_size=16, lr=3e-3, precision="32", channels_last=False, select_by="last")
    model = fit_model(ModelConfig(name="crackseg", pretrained="none"), cfg, train, val, ckpt_dir=tmp_path / "ck",
                      csv_path=tmp_path / "e.csv", epochs=cfg.epochs, pseudo=pseudo, progress=False)
    def f1_at(images: torch.Tensor, masks: torch.Tensor, threshold: float) -> float:
        _, heat = predict_batches(model, images, with_heatmaps=True, precision="32", channels_last=False)
        pred, truth = heat >= threshold, masks > 0
        return 2 * int((pred & truth).sum()) / max(int(pred.sum()) + int(truth.sum()), 1)

    # the map threshold is chosen on the validation images, then the test images are scored at it
    threshold = max((0.3, 0.4, 0.5, 0.6, 0.7, 0.8), key=lambda t: f1_at(val.images, val_masks, t))
    f1 = f1_at(test.images, test_masks, threshold)
    assert f1 >= 0.8, (f1, threshold)


def test_stage2_trains_from_a_stage1_model_file_by_one_command(tiny_run, crack_folder, tmp_path):
    import json

    from crackloc.cli import main

    out = tmp_path / "stage2"
    assert main(["train", "--data", str(crack_folder), "--preset", "tiny", "--out", str(out), "--pretrained", "none",
                 "--model", "crackseg", "--init-from", str(tiny_run / "model.pt"), "--epochs", "1",
                 "--select-by", "last", "--max-train", "16", "--no-eval"]) == 0
    assert (out / "model.pt").is_file() and not (out / "teacher.pt").exists()  # no teacher: stage 1 is given
    cache = torch.load(out / "pseudo_masks.pt", weights_only=True)
    assert cache["source"] == "refined" and tuple(cache["masks"].shape[-2:]) == (112, 112)
    assert set(cache["masks"].unique().tolist()) <= {0, 1, IGNORE}
    assert json.loads((out / "train_summary.json").read_text())["role"] == "student"


def test_gated_decoding_skips_only_windows_below_the_probability():
    """Windows below `decode_min_prob` get an empty map; the others get exactly the full decoder's map."""
    from crackloc.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="crackseg", pretrained="none")).eval()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        logits, full = model(x)  # [4], [4,1,64,64]
        p = torch.sigmoid(logits)
        model.decode_min_prob = float(p.sort().values[2])  # keeps the two most likely windows
        gated_logits, gated = model(x)
    keep = p >= model.decode_min_prob
    assert int(keep.sum()) == 2
    assert torch.equal(gated_logits, logits)
    torch.testing.assert_close(gated[keep], full[keep], atol=1e-5, rtol=1e-4)
    assert float(gated[~keep].max()) < 1e-6
