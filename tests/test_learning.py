"""The real training loop (Lightning, BCE + λ·L1 to teacher pseudo masks) learns the synthetic task."""

import dataclasses

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


def test_teacher_and_student_learn_the_synthetic_task(tmp_path):
    torch.manual_seed(0)
    train, val, test = _split(320, 0), _split(64, 1), _split(100, 2)
    cfg = TrainConfig(epochs=6, teacher_epochs=6, batch_size=32, lr=1e-3, patience=6, augment=True)
    teacher_cfg = ModelConfig(name="resnet18_cam", pretrained="none", output_stride=32, fusion="none", ahr=False)
    teacher = fit_model(teacher_cfg, cfg, train, val, ckpt_dir=tmp_path / "t", csv_path=tmp_path / "t.csv",
                        epochs=cfg.teacher_epochs, progress=False)
    auroc, acc = _accuracy(teacher, val, test)
    assert auroc > 0.95 and acc > 0.9
    pseudo = pseudo_masks(teacher, train.images, train.labels, grid=(4, 4), progress=False)
    assert pseudo.shape == (320, 1, 4, 4) and pseudo[train.labels < 0.5].abs().sum() == 0
    student_cfg = dataclasses.replace(ModelConfig(pretrained="none"))
    student = fit_model(student_cfg, cfg, train, val, ckpt_dir=tmp_path / "s", csv_path=tmp_path / "s.csv",
                        epochs=cfg.epochs, pseudo=pseudo, progress=False)
    auroc, acc = _accuracy(student, val, test)
    assert auroc > 0.95 and acc > 0.9
    _, heat = predict_batches(student, test.images[:4], with_heatmaps=True)
    assert heat.shape == (4, 1, 64, 64) and 0 <= heat.min() and heat.max() <= 1
