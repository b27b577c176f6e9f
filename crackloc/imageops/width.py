"""Crack width: the one definition, used by crack geometry and by the width error against human masks.

The width at a crack pixel p is **d_out(p) + d_in(p)**:

- d_out: the Euclidean distance from p to the nearest background pixel centre;
- d_in: the distance from p to the nearest boundary pixel centre, a boundary pixel being a mask
  pixel with a 4-neighbour outside the mask (the image edge is not a boundary).

The crack's edge lies midway between a boundary pixel and the background pixel beside it, so
the sum is twice the distance from p to the edge: a 5 px bar gives 5 on its centre line, a 1 px
line gives 1. The map is the 3×3 local maximum of that sum, because a thinned skeleton can sit
half a pixel off the ridge, and is 0 outside the mask. A crack's widths are the map read on its
skeleton (`skimage.morphology.skeletonize`).

Known limits (digitisation): an axis-aligned run of an even width w reads w − 1 (its ridge lies
between two pixel rows, which neither distance measures from: a 2 px line reads 1), and oblique
cracks read within about ±1 px of their drawn width (a 3 px bar at 30° reads 3, at 45° about 2.4).
"""

from __future__ import annotations

import numpy as np


def local_width_map(mask: np.ndarray) -> np.ndarray:
    """Crack width (px) at every pixel of bool [H,W] (module docstring): → float [H,W], 0 outside the mask."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask, dtype=bool)
    d_out = ndi.distance_transform_edt(mask)  # [H,W] to the nearest background pixel centre
    boundary = mask & ~ndi.binary_erosion(mask, border_value=1)  # the image edge is not a boundary
    d_in = ndi.distance_transform_edt(~boundary)  # [H,W] to the nearest boundary pixel centre
    width = ndi.maximum_filter(np.where(mask, d_out + d_in, 0.0), size=3)  # [H,W]
    return np.where(mask, width, 0.0)


def skeleton_widths(mask: np.ndarray) -> np.ndarray:
    """Crack widths (px) of bool [H,W] at its skeleton pixels: → float [N], raster order."""
    from skimage.morphology import skeletonize

    mask = np.asarray(mask, dtype=bool)
    return local_width_map(mask)[skeletonize(mask)]
