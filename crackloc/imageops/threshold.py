"""Global thresholds of a set of values."""

from __future__ import annotations

import torch


def otsu_threshold(values: torch.Tensor, *, bins: int = 128) -> float:
    """Otsu's threshold of a tensor of values (between-class variance maximised over `bins` bins).

    `skimage.filters.threshold_otsu`: the returned value is the centre of the last bin of the
    lower class. All values equal (within 1e-8): that value.
    """
    from skimage.filters import threshold_otsu

    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-8:
        return hi
    return float(threshold_otsu(values.detach().float().flatten().cpu().numpy(), nbins=bins))
