"""DDT co-localisation pseudo maps for PSOL (Wei et al. 2017, as used by Zhang et al. 2020).

Deep descriptor transforming: every spatial position of the teacher's last feature map is a
descriptor; over the positive TRAINING images, their mean and covariance give the first
principal direction. Projecting (descriptor − mean) on it gives a map whose positive part
is the region the images have in common. The sign of an eigenvector is arbitrary; DDT keeps
the side the object lies on, and here the object (a crack) is the smaller side: the sign
is chosen so that positive values cover less than half of the positive images' positions.

`ddt_pseudo_masks` plays the role of `crackloc.training.pseudo.pseudo_masks`: same inputs
and output format, so `train_run` picks one or the other by the student's `pseudo_source`.
Descriptors come from the trained CAM teacher (PSOL uses an ImageNet network as is; ours
may start from random init, so the teacher's fine-tuned features are the usable ones).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from crackloc.errors import CracklocError
from crackloc.models.fusion import align_to
from crackloc.tensors import autocast_for, nominal_stride, to_input, upsample_cells


@torch.no_grad()
def _descriptor_batches(teacher: torch.nn.Module, images: torch.Tensor, *, batch_size: int, progress: bool,
                        desc: str, precision: str = "auto"):
    """Yield the teacher's feature maps [b,C,h,w] (float64) batch by batch for uint8 [N,3,S,S]."""
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        x = to_input(images[start:start + batch_size], channels_last=True)  # [b,3,S,S]
        with autocast_for(x.device, precision):
            feats = teacher.features(x)  # [b,C,h,w]
        yield feats.double()


def ddt_direction(teacher: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 64,
                  precision: str = "auto", progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [C] and first principal direction [C] of the descriptors of uint8 images [N,3,S,S]."""
    total, outer, count = None, None, 0
    for feats in _descriptor_batches(teacher, images, batch_size=batch_size, progress=progress,
                                     desc="DDT statistics", precision=precision):
        d = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])  # [b·h·w, C]
        total = d.sum(0) if total is None else total + d.sum(0)
        outer = d.T @ d if outer is None else outer + d.T @ d
        count += len(d)
    if count < 2:
        raise CracklocError("DDT needs descriptors of at least one positive training image")
    mean = total / count  # [C]
    cov = outer / count - torch.outer(mean, mean)  # [C,C]
    _, vectors = torch.linalg.eigh(cov)  # eigenvalues ascending
    return mean, vectors[:, -1]


def ddt_projection(teacher: torch.nn.Module, images: torch.Tensor, mean: torch.Tensor, direction: torch.Tensor,
                   *, batch_size: int = 64, precision: str = "auto", progress: bool = True) -> torch.Tensor:
    """(descriptor − mean) · direction at every position: uint8 [N,3,S,S] → float [N,1,h,w]."""
    out = []
    for feats in _descriptor_batches(teacher, images, batch_size=batch_size, progress=progress,
                                     desc="DDT maps", precision=precision):
        out.append(torch.einsum("c,bchw->bhw", direction, feats - mean.view(1, -1, 1, 1))[:, None].float())
    return torch.cat(out)


def ddt_pseudo_masks(teacher: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                     grid: tuple[int, int], phase: float = 0.0, negatives: str = "zeros", batch_size: int = 64,
                     precision: str = "auto", progress: bool = True) -> torch.Tensor:
    """DDT pseudo maps for the PSOL regressor.

    Args:
        teacher: a model with `features(x)` → [B,C,h,w] (the CAM teacher).
        images: uint8 [N,3,S,S]; labels: [N] in {0,1} (statistics use the positives only).
        grid: the student's heatmap grid (h, w); phase: the student's `cell_phase`.
        negatives: 'zeros' gives crack-free images an empty map; 'cam' keeps their DDT map.
    Returns:
        float16 [N,1,h,w] in [0,1]: the fraction of each cell where the projection is positive.
    """
    teacher = teacher.eval().to(memory_format=torch.channels_last)
    pos = labels > 0.5
    mean, direction = ddt_direction(teacher, images[pos], batch_size=batch_size, precision=precision,
                                    progress=progress)
    proj = ddt_projection(teacher, images, mean, direction, batch_size=batch_size, precision=precision,
                          progress=progress)
    if (proj[pos] > 0).float().mean() > 0.5:  # the object is the smaller side
        proj = -proj
    binary = (proj > 0).float()  # [N,1,h',w']
    size = tuple(images.shape[-2:])
    stride, teacher_phase = nominal_stride(size[0], binary.shape[-2]), getattr(teacher, "cell_phase", 0.0)
    masks = torch.cat([align_to((upsample_cells(part, size, stride=stride, phase=teacher_phase) >= 0.5).float(),
                                grid, phase=phase)  # [n,1,h,w], cells kept on their pixels
                       for part in binary.split(256)])
    if negatives == "zeros":
        masks[~pos] = 0.0
    return masks.clamp(0, 1).half()
