"""Registration: where a map draws a line, measured against the line's signed distance map."""

from __future__ import annotations

import torch


def ridge_offsets(heat: torch.Tensor, dist: torch.Tensor, *, band: float = 40.0) -> torch.Tensor:
    """Signed offset of the map's centre of mass from the line, across it, every 4 px along it.

    For each pixel row (or column, for steep lines) the map within `band` px of the line is
    reduced to its weighted mean signed distance: 0 when the ridge lies on the line.
    """
    steep = (dist[1:, :] - dist[:-1, :]).abs().mean() < (dist[:, 1:] - dist[:, :-1]).abs().mean()
    h, d = (heat.T, dist.T) if not steep else (heat, dist)  # walk along the line, one slice per step
    out = []
    for row in range(0, h.shape[0], 4):
        near = d[row].abs() <= band
        wgt = h[row][near].double()
        if near.sum() > band and wgt.sum() > 0:
            out.append(float((wgt * d[row][near]).sum() / wgt.sum()))
    return torch.tensor(out)
