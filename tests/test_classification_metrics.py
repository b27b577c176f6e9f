import pytest
import torch

from crackloc.evaluation.classification import (
    classification_metrics,
    pseudo_mask_iou,
)
from crackloc.tensors import upsample_cells
from crackloc.training.threshold import choose_threshold

PROBS = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.1])
LABELS = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])


def test_metrics_match_hand_computed_values():
    m = classification_metrics(PROBS, LABELS, threshold=0.5)
    # predictions at 0.5: 1 1 0 1 0 → TP 2, FP 1, FN 1, TN 1
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # AUROC: of the 6 (positive, negative) pairs only (0.3, 0.6) is ordered wrongly
    assert m["auroc"] == pytest.approx(5 / 6)


def test_threshold_choice_maximises_f1():
    # t=0.3: TP 3, FP 1 → F1 = 6/7, better than t=0.5 (2/3) or t=0.8 (4/5)
    assert choose_threshold(PROBS, LABELS) == pytest.approx(0.3)


def test_pseudo_iou_of_identical_maps_is_one():
    cam = torch.zeros(2, 1, 4, 4)
    cam[:, :, 1, 1] = 5.0
    heat = upsample_cells(cam, (8, 8), stride=2)  # the teacher's cells on their pixels, as cam_masks reads them
    ref = heat >= torch.quantile(heat.flatten(1), 0.95, dim=1).view(-1, 1, 1, 1)
    out = pseudo_mask_iou(ref.float(), cam, heat_threshold=0.5, percentile=95.0)
    assert out["iou_vs_teacher_pseudo_mean"] == pytest.approx(1.0)
