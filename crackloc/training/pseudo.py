"""Teacher pseudo masks: CAM → per-image percentile → binary → box-pooled onto the student grid."""

from __future__ import annotations

import torch
from tqdm import tqdm

from crackloc.models.fusion import align_to
from crackloc.models.refine import percentile_threshold
from crackloc.tensors import autocast_for, nominal_stride, to_input, upsample_cells


@torch.no_grad()
def teacher_cams(teacher: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 64,
                 channels_last: bool = False, precision: str = "auto", progress: bool = False) -> torch.Tensor:
    """Raw CAMs of a teacher (a model with `raw_cam`): uint8 [N,3,S,S] → float [N,1,h,w].

    `precision` 'bf16' runs under bf16 autocast, '32' in fp32, 'auto' as the device runs best (as training does).
    """
    teacher = teacher.eval()
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="teacher CAMs", disable=not progress,
                      leave=False):
        x = to_input(images[start:start + batch_size], channels_last=channels_last)  # [b,3,S,S]
        with autocast_for(x.device, precision):
            out.append(teacher.raw_cam(x).float())  # [b,1,h,w]
    return torch.cat(out)


def cam_masks(cams: torch.Tensor, *, size: tuple[int, int], percentile: float, phase: float = 0.0,
              target: str = "binary") -> torch.Tensor:
    """CAMs [N,1,h,w] → masks [N,1,*size]: upsampled (cells kept on their pixels, `phase` of the
    teacher's backbone), then 'binary' (bool: cut at the per-image percentile) or 'soft' (float in
    [0,1]: ReLU'd and divided by the per-image maximum)."""
    cams = upsample_cells(cams.float(), size, stride=nominal_stride(size[0], cams.shape[-2]), phase=phase)
    if target == "soft":
        kept = cams.clamp(min=0)  # [N,1,H,W]
        return kept / kept.flatten(1).max(dim=1).values.clamp(min=1e-6).view(-1, 1, 1, 1)
    return cams >= percentile_threshold(cams, percentile)


@torch.no_grad()
def pseudo_masks(teacher: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                 grid: tuple[int, int], phase: float = 0.0, percentile: float = 95.0, negatives: str = "zeros",
                 target: str = "binary", batch_size: int = 64, precision: str = "auto",
                 progress: bool = True) -> torch.Tensor:
    """Pseudo ground truth for the student's L1 term (made at the patch size by `train_run`).

    Args:
        teacher: a CAM model with `raw_cam(x)`.
        images: uint8 [N,3,S,S]; labels: [N] in {0,1}.
        grid: the size the masks are returned at: the patch size (S, S) in training (augmented
            with the images, then pooled onto the student's cells), or a model grid (h, w).
        phase: the student's `cell_phase` (where its cells sit; the teacher's comes from the teacher).
        percentile: the CAM is cut at this per-image percentile (paper: 95).
        negatives: 'zeros' gives crack-free images an empty mask; 'cam' treats them alike.
        target: 'binary' (the paper's cut CAM) or 'soft' (the normalised CAM, `cam_masks`).
        precision: 'bf16' (autocast) or '32' for the teacher's CAM pass (`train.precision`).
    Returns:
        float16 [N,1,h,w] in [0,1] (fraction of each cell above the threshold).
    """
    cams = teacher_cams(teacher, images, batch_size=batch_size, channels_last=True, precision=precision,
                        progress=progress)
    size = tuple(images.shape[-2:])
    teacher_phase = getattr(teacher, "cell_phase", 0.0)
    # each student cell gets the mask fraction around the pixel it sits on (align_to), chunks bound S×S masks
    masks = torch.cat([align_to(cam_masks(c, size=size, percentile=percentile, phase=teacher_phase,
                                          target=target).float(), grid, phase=phase)
                       for c in cams.split(batch_size)])  # [N,1,h,w]
    if negatives == "zeros":
        masks[labels < 0.5] = 0.0
    return masks.half()
