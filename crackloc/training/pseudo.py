"""Teacher pseudo masks: CAM → per-image percentile → binary → area-pooled to the student grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from crackloc.models.refine import percentile_threshold
from crackloc.training.module import to_input


@torch.no_grad()
def pseudo_masks(teacher: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                 grid: tuple[int, int], percentile: float = 95.0, negatives: str = "zeros",
                 batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """Pseudo ground truth for the student's L1 term.

    Args:
        teacher: a CAM model with `raw_cam(x)`.
        images: uint8 [N,3,S,S]; labels: [N] in {0,1}.
        grid: the student's heatmap grid (h, w), e.g. (14, 14) at 224 px and stride 16.
        percentile: the CAM is cut at this per-image percentile (paper: 95).
        negatives: 'zeros' gives crack-free images an empty mask; 'cam' treats them alike.
    Returns:
        float16 [N,1,h,w] in [0,1] (fraction of each cell above the threshold).
    """
    teacher = teacher.eval().to(memory_format=torch.channels_last)
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="pseudo masks", disable=not progress,
                      leave=False):
        x = to_input(images[start:start + batch_size], channels_last=True)  # [b,3,S,S]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=x.device.type == "cpu"):
            cam = teacher.raw_cam(x)  # [b,1,h',w']
        cam = F.interpolate(cam.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        binary = (cam >= percentile_threshold(cam, percentile)).float()  # [b,1,S,S]
        out.append(F.adaptive_avg_pool2d(binary, grid))  # [b,1,h,w]
    masks = torch.cat(out)
    if negatives == "zeros":
        masks[labels < 0.5] = 0.0
    return masks.half()
