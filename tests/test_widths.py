"""Width error along the human skeleton, against hand-computed widths."""

from __future__ import annotations

import pytest
import torch

from crackloc.evaluation.widths import WidthErrorEvaluator, widths_along_skeleton


def _bar(width: int, *, size: int = 64) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    top = size // 2 - width // 2
    m[top: top + width, 8:56] = True
    return m


@pytest.mark.parametrize("width", [1, 3, 5, 7])
def test_true_width_of_a_bar_is_its_width(width):
    true, pred = widths_along_skeleton(_bar(width).numpy(), _bar(width).numpy())
    inner = true[len(true) // 4: -len(true) // 4]  # away from the bar's ends
    assert inner == pytest.approx(width, abs=0.01) and pred[len(pred) // 4] == pytest.approx(width, abs=0.01)


def test_errors_by_hand():
    mask = _bar(5)
    exact, wide, missed = (WidthErrorEvaluator(threshold=0.5) for _ in range(3))
    exact.accumulate(mask.float(), mask)
    wide.accumulate(_bar(9).float(), mask)  # 4 px too wide
    missed.accumulate(torch.zeros(64, 64), mask)  # predicted width 0 → error = true width
    assert exact.compute()["width_error_px_median"] == 0.0
    assert wide.compute()["width_error_px_median"] == pytest.approx(4.0, abs=0.25)
    r = missed.compute()
    assert r["width_error_px_median"] == pytest.approx(5.0, abs=0.25) and r["mean_pred_width_px"] == 0.0
    empty = WidthErrorEvaluator(threshold=0.5)
    empty.accumulate(torch.zeros(8, 8), torch.zeros(8, 8, dtype=torch.bool))
    assert empty.compute()["width_error_px_median"] is None
