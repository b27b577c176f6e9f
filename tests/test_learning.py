"""The real training loop (Lightning, BCE + λ·L1 to teacher pseudo masks) learns the synthetic task.

The full teacher + student run (~1 min) is in the slow tier; the default tier's check that
`crackloc train` learns is tests/test_resume.py (teacher + student on a smaller task).
"""

import dataclasses

import pytest
import torch

from crackloc.config import ModelConfig, TrainConfig
from crackloc.data.dataset import DecodedSplit
from crackloc.data.synthetic import make_crack_set
from crackloc.evaluation.classification import classification_metrics
from crackloc.tensors import predict_batches
from crackloc.training.fit import fit_model
from crackloc.training.pseudo import pseudo_masks
from crackloc.training.threshold import choose_threshold


def _split(n: int, seed: int) -> DecodedSplit:
    images, labels, _ = make_crack_set(n, size=64, seed=seed, width=2.0)
    return DecodedSplit(images, labels, [f"{seed}_{i}" for i in range(n)])


def _accuracy(model, val: DecodedSplit, test: DecodedSplit) -> tuple[float, float]:
    """(test AUROC, test accuracy at the validation-chosen threshold), as `crackloc train` does."""
    threshold = choose_threshold(predict_batches(model, val.images)[0], val.labels)
    m = classification_metrics(predict_batches(model, test.images)[0], test.labels, threshold=threshold)
    return m["auroc"], m["accuracy"]


@pytest.mark.slow
def test_teacher_and_student_learn_the_synthetic_task(tmp_path):
    torch.manual_seed(0)
    train, val, test = _split(320, 0), _split(64, 1), _split(100, 2)
    cfg = TrainConfig(epochs=6, teacher_epochs=6, batch_size=32, lr=1e-3, patience=6, augment=True)
    teacher_cfg = ModelConfig(name="resnet18_cam", pretrained="none", output_stride=32, fusion="none", ahr=False)
    teacher = fit_model(teacher_cfg, cfg, train, val, ckpt_dir=tmp_path / "t", log_dir=tmp_path / "t_logs",
                        epochs=cfg.teacher_epochs, progress=False)
    auroc, acc = _accuracy(teacher, val, test)
    assert auroc > 0.95 and acc > 0.9
    pseudo = pseudo_masks(teacher, train.images, train.labels, grid=(4, 4), progress=False)
    assert pseudo.shape == (320, 1, 4, 4) and pseudo[train.labels < 0.5].abs().sum() == 0
    student_cfg = dataclasses.replace(ModelConfig(pretrained="none"))
    student = fit_model(student_cfg, cfg, train, val, ckpt_dir=tmp_path / "s", log_dir=tmp_path / "s_logs",
                        epochs=cfg.epochs, pseudo=pseudo, progress=False)
    auroc, acc = _accuracy(student, val, test)
    assert auroc > 0.95 and acc > 0.9
    _, heat = predict_batches(student, test.images[:4], with_heatmaps=True)
    assert heat.shape == (4, 1, 64, 64) and 0 <= heat.min() and heat.max() <= 1


def test_augmented_targets_stay_on_the_cells_pixels():
    """Pseudo masks are augmented at pixel level, then pooled onto the student grid: after a flip or
    rotation, every cell marked as crack sits on a pixel of the moved band (flipping a 14×14 grid
    instead would put them up to 15 px off, as the grid is not symmetric in a 224 px patch)."""
    from crackloc.data.dataset import augment
    from crackloc.models.fusion import align_to

    mask = torch.zeros(1, 1, 224, 224)
    mask[..., 40:72] = 1.0  # a vertical band, columns 40..71
    image = mask.expand(1, 3, 224, 224).clone()
    for seed in range(12):
        torch.manual_seed(seed)
        moved_image, moved_mask = augment(image, mask)
        target = align_to(moved_mask, (14, 14), phase=0.0)  # [1,1,14,14], cell i on pixel 16·i
        band = moved_image[0, 0] > 0.5  # [224,224]
        ys, xs = (t * 16 for t in torch.nonzero(target[0, 0] >= 0.5, as_tuple=True))
        assert len(ys) > 0
        assert bool(band[ys, xs].all()), seed


def test_soft_pseudo_targets_are_the_normalised_cam():
    from crackloc.training.pseudo import cam_masks

    cams = torch.tensor([[[[-1.0, 2.0], [4.0, 0.0]]]])  # [1,1,2,2]
    soft = cam_masks(cams, size=(2, 2), percentile=95.0, target="soft")
    torch.testing.assert_close(soft, torch.tensor([[[[0.0, 0.5], [1.0, 0.0]]]]))
    binary = cam_masks(cams, size=(2, 2), percentile=50.0)
    assert binary.dtype == torch.bool and int(binary.sum()) == 2


def test_uncut_l1_map_gives_every_cell_a_value_in_training():
    from crackloc.config import ModelConfig
    from crackloc.models.registry import build_model

    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    cut = build_model(ModelConfig(pretrained="none", heatmap_norm="sigmoid")).train()
    uncut = build_model(ModelConfig(pretrained="none", heatmap_norm="sigmoid", l1_map="uncut")).train()
    uncut.load_state_dict(cut.state_dict())
    _, cut_map = cut.forward_lowres(x)
    _, uncut_map = uncut.forward_lowres(x)
    assert float((cut_map == 0).float().mean()) >= 0.85  # AHR's 90th-percentile cut
    assert bool((uncut_map > 0).all())
    _, eval_map = uncut.eval().forward_lowres(x)
    assert float((eval_map == 0).float().mean()) >= 0.85  # inference keeps the refined map
