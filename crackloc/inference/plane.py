"""Millimetres from a printed marker: crack lengths and widths on the surface plane.

A marker (`crackloc.imageops.marker`) gives the homography from photo px to plane mm, so the
scale varies across a tilted photo and differs along and across a crack. Each crack gets its own
pair of scales, averaged over its skeleton pixels: mm per px along the crack's local direction
(for lengths) and across it (for widths; `Marker.mm_per_px_across`). Local directions come from
the skeleton's neighbour offsets in a 5×5 window (their principal axis).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage as ndi

from crackloc.imageops.marker import Marker, MarkerSpec, find_marker
from crackloc.inference.geometry import CrackReport

WINDOW = 2  # px: neighbour offsets up to this far give a skeleton pixel's direction


def skeleton_directions(skeleton: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Unit tangents (x, y) [N,2] at skeleton pixels ([N,2] (y, x)) of an image of `shape`."""
    if not len(skeleton):
        return np.zeros((0, 2))
    y0, x0 = np.maximum(skeleton.min(0) - WINDOW, 0)
    y1, x1 = np.minimum(skeleton.max(0) + WINDOW + 1, shape)
    grid = np.zeros((y1 - y0, x1 - x0), np.float64)
    grid[skeleton[:, 0] - y0, skeleton[:, 1] - x0] = 1.0
    dy, dx = np.mgrid[-WINDOW:WINDOW + 1, -WINDOW:WINDOW + 1].astype(np.float64)
    ys, xs = skeleton[:, 0] - y0, skeleton[:, 1] - x0
    sxx, syy, sxy = (ndi.correlate(grid, k, mode="constant")[ys, xs] for k in (dx * dx, dy * dy, dx * dy))
    angle = 0.5 * np.arctan2(2 * sxy, sxx - syy)  # [N] principal axis of the neighbour offsets
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def plane_scale(skeleton: np.ndarray, shape: tuple[int, int], marker: Marker) -> tuple[float, float]:
    """(mm per px along, mm per px across) a crack with these skeleton pixels, averaged along it."""
    if not len(skeleton):
        return marker.mean_mm_per_px, marker.mean_mm_per_px
    points = skeleton[:, ::-1].astype(np.float64)  # [N,2] (x, y) pixel centres
    tangents = skeleton_directions(skeleton, shape)  # [N,2]
    normals = np.stack([-tangents[:, 1], tangents[:, 0]], axis=1)
    return float(marker.mm_per_px(points, tangents).mean()), float(marker.mm_per_px_across(points, normals).mean())


def marker_note(marker: Marker | None, spec: MarkerSpec) -> dict:
    """What a record says of the marker: found (and where, how large), or not found (and which was sought)."""
    return {"found": True, **marker.to_dict()} if marker is not None else {"found": False, "spec": str(spec)}


def measure_on_plane(report: CrackReport, image: np.ndarray, spec: MarkerSpec) -> CrackReport:
    """`report` in mm on the plane of the marker `image` (uint8 [H,W,3]) shows; else in px, with the marker
    noted as not found (`report.marker`), so a photo is never measured in px silently."""
    marker = find_marker(image, spec)
    if marker is None:
        return dataclasses.replace(report, marker=marker_note(None, spec))
    shape = (report.height, report.width)
    cracks = [dataclasses.replace(c, mm_per_px=None, plane_scale=plane_scale(c.skeleton, shape, marker))
              for c in report.cracks]
    return dataclasses.replace(report, cracks=cracks, mm_per_px=None, marker=marker_note(marker, spec))
