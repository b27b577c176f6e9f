"""Image operations shared by the floors, the line guide, the auto scale, the stage-2 labels,
crack geometry and the evaluators. Nothing here knows about models, data sets or files.

- `filters` (torch, [B,1,H,W]): `grey` (Rec.601 luminance), `odd_size`, `gauss_kernels`,
  `separable`, `line_response` (σ²·λ_max of the Hessian at one σ), `ridge_response` and
  `ridge_evidence` (multi-scale dark-line strength and its [0,1) map), `blackhat_response`
  (multi-scale closing − image).
- `morphology`: `square_max`, `grey_closing`, `dilate_square` (torch, [B,1,H,W]), `disk_max`
  (torch, [H,W]); `component_spans` (numpy: 8-connected components, their box diagonals and areas).
- `threshold`: `otsu_threshold` (skimage).
- `width` (numpy): `local_width_map`, `skeleton_widths`: the one crack-width definition.
- `marker` (numpy + OpenCV): `parse_marker`, `find_marker` → `Marker`: a printed ArUco marker and the
  homography that rectifies its plane (photo px → plane mm), for lengths and widths in mm.

The torch operations are re-exported here; import the numpy ones from their modules. scipy and
scikit-image are imported inside the functions that use them, so importing this package is cheap.
"""

from crackloc.imageops.filters import (
    BLACKHAT_WINDOWS,
    LUMA,
    RIDGE_SIGMAS,
    TAU_RIDGE,
    blackhat_response,
    gauss_kernels,
    grey,
    line_response,
    odd_size,
    ridge_evidence,
    ridge_response,
    separable,
)
from crackloc.imageops.morphology import dilate_square, disk_max, grey_closing, square_max

__all__ = [
    "BLACKHAT_WINDOWS",
    "LUMA",
    "RIDGE_SIGMAS",
    "TAU_RIDGE",
    "blackhat_response",
    "dilate_square",
    "disk_max",
    "gauss_kernels",
    "grey",
    "grey_closing",
    "line_response",
    "odd_size",
    "ridge_evidence",
    "ridge_response",
    "separable",
    "square_max",
]
