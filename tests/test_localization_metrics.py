"""Localisation metrics against hand-computed values, and the evaluate_localization run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from crackloc.config import InferenceConfig
from crackloc.data.synthetic import make_crack_image
from crackloc.evaluation.localization import (
    PxAPEvaluator,
    ThresholdEvaluator,
    dev_test_scores,
    pick_threshold,
    scores_at,
)
from crackloc.evaluation.localize_run import evaluate_localization, partition_stems
from crackloc.inference.predictor import Predictor

# 2×3 example. Pixels by descending score: 0.875 P, 0.75 P, 0.625 N, 0.375 P, 0.25 N, 0.125 N.
HEAT = torch.tensor([[0.875, 0.625, 0.25], [0.75, 0.375, 0.125]])
MASK = torch.tensor([[1, 0, 0], [1, 1, 0]])


def test_pxap_hand_computed() -> None:
    # recall steps: 0.875 → P=1, R=1/3; 0.75 → P=1, R=2/3; 0.625 → R unchanged;
    # 0.375 → P=3/4, R=1.  AP = 1·1/3 + 1·1/3 + 3/4·1/3 = 11/12.
    ev = PxAPEvaluator()
    ev.accumulate(HEAT, MASK)
    assert ev.compute() == pytest.approx(11 / 12)


def test_best_f1_iou_hand_computed() -> None:
    # F1 at t ∈ (0.625, 0.75]: P=1, R=2/3 → 0.8;  t ∈ (0.25, 0.375]: P=3/4, R=1 → 6/7 (best);
    # t ≤ 0.125: P=1/2, R=1 → 2/3.  Lowest grid threshold with 6/7 is 0.251; there
    # TP=3, FP=1, FN=0 → IoU = 3/4.
    ev = ThresholdEvaluator()
    ev.accumulate(HEAT, MASK)
    curves = ev.compute()
    assert curves.ods_f1 == pytest.approx(6 / 7)
    assert curves.ois_f1 == pytest.approx(6 / 7)  # one image
    t = pick_threshold(curves)
    assert t == pytest.approx(0.251)
    assert scores_at(curves, t) == pytest.approx({"precision": 0.75, "recall": 1.0,
                                                  "f1": 6 / 7, "iou": 0.75})
    assert scores_at(curves, 0.7) == pytest.approx({"precision": 1.0, "recall": 2 / 3,
                                                    "f1": 0.8, "iou": 2 / 3})
    assert curves.thresholds.shape == curves.f1.shape == curves.iou.shape == (1000,)


def test_tolerance_one_pixel_hand_computed() -> None:
    # k=1 (4-neighbours). At t=0.751 only (0,0) is predicted: it is a crack → P=1; the crack
    # (1,0) touches it, (1,1) is √2 away → R=2/3, F1=0.8. For t in (0.25, 0.75]: the 0.625 at
    # (0,1) touches crack (0,0) → P=1, R=1, F1=1 = best, lowest 0.251.
    # At t=0.25 the pixel (0,2) has no crack within 1 px → P=4/5.
    ev = ThresholdEvaluator(tolerance=1)
    ev.accumulate(HEAT, MASK)
    curves = ev.compute()
    assert scores_at(curves, 0.751)["recall"] == pytest.approx(2 / 3)
    assert scores_at(curves, 0.751)["f1"] == pytest.approx(0.8)
    assert pick_threshold(curves) == pytest.approx(0.251)
    assert scores_at(curves, 0.251) == pytest.approx({"precision": 1, "recall": 1, "f1": 1,
                                                      "iou": 1})
    assert scores_at(curves, 0.25)["precision"] == pytest.approx(0.8)


@pytest.mark.parametrize("offset,hit", [((2, 0), True), ((1, 1), True), ((1, 2), False)])
def test_tolerance_is_a_euclidean_disk(offset: tuple[int, int], hit: bool) -> None:
    # one crack pixel at (3,3), one predicted pixel at (3,3)+offset: distance 2, √2, √5 vs k=2
    mask = torch.zeros(7, 7, dtype=torch.bool)
    mask[3, 3] = True
    heat = torch.zeros(7, 7)
    heat[3 + offset[0], 3 + offset[1]] = 1.0
    ev = ThresholdEvaluator(tolerance=2)
    ev.accumulate(heat, mask)
    expected = 1.0 if hit else 0.0  # P and R both 1 (hit) or both 0 (miss) at t=0.5
    assert scores_at(ev.compute(), 0.5) == pytest.approx(
        {"precision": expected, "recall": expected, "f1": expected, "iou": expected})


def test_perfect_map_scores_one_and_streams_batches() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 1, 20, 30, generator=g) > 0.8  # [B,1,H,W]
    ev, ap = ThresholdEvaluator(), PxAPEvaluator()
    for b in range(3):  # image by image
        ev.accumulate(masks[b].float(), masks[b])
        ap.accumulate(masks[b : b + 1].float(), masks[b : b + 1])
    assert ap.compute() == pytest.approx(1.0)
    curves = ev.compute()
    assert curves.ods_f1 == pytest.approx(1.0) and curves.ois_f1 == pytest.approx(1.0)
    assert len(curves.per_image_f1) == 3


def test_batch_equals_image_by_image() -> None:
    g = torch.Generator().manual_seed(1)
    heat, masks = torch.rand(4, 16, 16, generator=g), torch.rand(4, 16, 16, generator=g) > 0.7
    a, b = ThresholdEvaluator(tolerance=2), ThresholdEvaluator(tolerance=2)
    a.accumulate(heat, masks)
    for i in range(4):
        b.accumulate(heat[i], masks[i])
    assert torch.equal(a.tp, b.tp) and torch.equal(a.fp, b.fp) and torch.equal(a.matched, b.matched)
    exact = ThresholdEvaluator()
    exact.accumulate(heat, masks)
    c = exact.compute()  # k=0: IoU = F1/(2−F1) equals TP/(TP+FP+FN) at every threshold
    assert torch.allclose(c.iou, c.tp / (c.tp + c.fp + c.fn).double(), atol=1e-12)


def test_dev_threshold_applied_to_test() -> None:
    # dev: crack 0.6, background 0.2 → F1 = 1 for t in (0.2, 0.6]; lowest grid t = 0.201.
    # test: crack 0.15, background 0.1 → its own best (ODS) is F1 = 1 at t in (0.1, 0.15], but
    # it must be scored at dev's 0.201, where it predicts nothing.
    dev = ThresholdEvaluator()
    dev.accumulate(torch.tensor([[0.6, 0.2], [0.6, 0.2]]), torch.tensor([[1, 0], [1, 0]]))
    test = ThresholdEvaluator()
    test.accumulate(torch.tensor([[0.15, 0.1], [0.15, 0.1]]), torch.tensor([[1, 0], [1, 0]]))
    scores = dev_test_scores(dev, test)
    assert scores["threshold"] == pytest.approx(0.201) and scores["dev_f1"] == pytest.approx(1)
    # at 0.201 nothing in test is predicted: P=1 (no prediction), R=0 → F1 = 0, IoU = 0,
    # although test's own best threshold (ODS) reaches F1 = 1.
    assert scores["f1"] == 0.0 and scores["iou"] == 0.0 and scores["recall"] == 0.0
    assert scores["ods_f1"] == pytest.approx(1.0)


def test_ois_skips_empty_masks_and_averages_per_image() -> None:
    ev = ThresholdEvaluator()
    ev.accumulate(HEAT, MASK)  # best F1 6/7
    ev.accumulate(torch.tensor([[0.9, 0.1]]), torch.tensor([[1, 0]]))  # best F1 1
    ev.accumulate(torch.tensor([[0.9, 0.1]]), torch.tensor([[0, 0]]))  # empty mask: skipped
    curves = ev.compute()
    assert curves.per_image_f1[2] != curves.per_image_f1[2]  # NaN
    assert curves.ois_f1 == pytest.approx((6 / 7 + 1) / 2)


def test_input_validation() -> None:
    ev = ThresholdEvaluator()
    with pytest.raises(ValueError, match="shapes differ"):
        ev.accumulate(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        ev.accumulate(torch.full((2, 2), 1.5), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        ev.accumulate(torch.full((2, 2), float("nan")), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="binary"):
        ev.accumulate(torch.zeros(2, 2), torch.full((2, 2), 2))
    with pytest.raises(ValueError, match="nothing accumulated"):
        ev.compute()
    ev.accumulate(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="no crack pixel"):
        ev.compute()


def test_partition_is_deterministic_and_disjoint() -> None:
    stems = [f"{i:03d}" for i in range(20)]
    dev, test = partition_stems(stems, dev_fraction=0.25, seed=3)
    assert (dev, test) == partition_stems(list(reversed(stems)), dev_fraction=0.25, seed=3)
    assert len(dev) == 5 and len(test) == 15 and not set(dev) & set(test)
    assert partition_stems(stems, dev_fraction=0.25, seed=4) != (dev, test)


class DarknessModel(nn.Module):
    """Heatmap = 1 − grey level (synthetic cracks are dark); logits from the darkest pixel."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heat = 1.0 - x.mean(dim=1, keepdim=True)  # [B,1,H,W]
        return heat.amax(dim=(1, 2, 3)), heat


def test_evaluate_localization_writes_report(tmp_path) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(6):
        img, mask = make_crack_image(48, 72, crack=True, seed=i)
        Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(
            root / "images" / f"{i}.png")
        Image.fromarray(mask[0].numpy().astype(np.uint8) * 255).save(root / "masks" / f"{i}.png")
    (root / "images" / "bad.jpg").write_bytes(b"not an image")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "bad.png")
    out = tmp_path / "out"
    pred = Predictor.from_model(DarknessModel(), InferenceConfig(tile=32, gate=False, precision="32"))
    m = evaluate_localization(pred, root, out, dev_fraction=0.3, tolerance=2, progress=False, n_overlays=2)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["pxap"] == pytest.approx(m["pxap"]) and saved["threshold"] == m["threshold"]
    assert {"pxap", "pxap_all", "f1", "iou", "ods_f1", "ois_f1", "threshold", "n_images",
            "n_dev", "n_test", "tolerance", "tile", "scale", "seed", "failed"} <= saved.keys()
    part = json.loads((out / "partition.json").read_text())
    assert sorted(part["dev"] + part["test"]) == sorted(["bad", *map(str, range(6))])
    assert m["n_images"] == 6 and m["n_dev"] + m["n_test"] == 6
    assert [f["path"].endswith("bad.jpg") for f in m["failed"]] == [True]
    assert 0.5 < m["pxap"] <= 1.0 and 0.0 < m["f1"] <= 1.0 and 0.0 < m["iou"] <= 1.0
    assert (out / "pr_curve.png").stat().st_size > 0 and (out / "overlays.png").stat().st_size > 0
    # pixel-exact ODS/OIS beside the 2 px ones: never above them, and equal to them when scored with no tolerance
    assert 0.0 < m["ods_f1_0px"] <= m["ods_f1"] and 0.0 < m["ois_f1_0px"] <= m["ois_f1"]
    exact = evaluate_localization(pred, root, tmp_path / "exact", dev_fraction=0.3, tolerance=0, progress=False,
                                  n_overlays=0)
    assert (exact["ods_f1_0px"], exact["ois_f1_0px"]) == (exact["ods_f1"], exact["ois_f1"]) == \
        (m["ods_f1_0px"], m["ois_f1_0px"])
