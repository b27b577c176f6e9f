"""The Lightning module: one loop for every registered model (BCE + λ·L1 to pseudo masks)."""

from __future__ import annotations

import dataclasses

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAUROC

from crackloc.config import ModelConfig, TrainConfig
from crackloc.data.confusers import add_confusers
from crackloc.data.dataset import augment, mosaic, step_negatives, zoom_out
from crackloc.models.fusion import align_to
from crackloc.tensors import to_input
from crackloc.training.losses import pixel_loss

CONFIG_KEY = "crackloc_config"  # the settings a Lightning checkpoint was made with (checked on --resume)
RESUME_FREE = ("num_workers", "accelerator", "devices", "num_nodes", "strategy", "precision")  # may change


def config_snapshot(model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict[str, object]:
    """The settings a checkpoint must share with a run that resumes it: `model.*` and `train.*` keys."""
    flat: dict[str, object] = {f"model.{k}": v for k, v in dataclasses.asdict(model_cfg).items()}
    flat.update({f"train.{k}": v for k, v in dataclasses.asdict(train_cfg).items() if k not in RESUME_FREE})
    return flat


class LitLocalizer(L.LightningModule):
    """Trains any registry model; the L1 term is used only by models that want pseudo masks.

    Validation AUROC, loss and accuracy are torchmetrics states: under DDP `compute()` gathers
    them from every process, so each rank logs the same whole-validation-set numbers (early
    stopping and the best checkpoint agree across ranks).
    """

    def __init__(self, model: torch.nn.Module, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
        super().__init__()
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.snapshot = config_snapshot(model_cfg, train_cfg)  # what its checkpoints are made with
        self.model = model
        if train_cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.val_auroc = BinaryAUROC()
        self.val_loss = MeanMetric()  # per-image BCE, averaged over all validation images
        self.val_acc = MeanMetric()  # per-image correctness at logit 0

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        images, labels, pseudo = batch  # [B,3,S,S] uint8, [B], [B,1,S,S] (pixel masks) or [B,0]
        use_l1 = self.model.uses_pseudo_masks and pseudo.dim() == 4 and self.train_cfg.lambda_l1 > 0
        if self.train_cfg.augment:  # at pixel level, so the masks move exactly with the image
            images, pseudo = augment(images, pseudo)
        stage2 = use_l1 and self.model.dense_training  # pixel labels with an ignore band
        if stage2 and self.train_cfg.zoom_out < 1 and bool(torch.rand(()) < 0.5):
            factor = self.train_cfg.zoom_out + (1 - self.train_cfg.zoom_out) * float(torch.rand(()))
            images, pseudo = zoom_out(images, pseudo, factor=factor)
        if stage2 and self.train_cfg.mosaic > 0 and bool(torch.rand(()) < self.train_cfg.mosaic):
            grid = int(torch.randint(2, self.train_cfg.mosaic_max_grid + 1, ()))
            images, pseudo = mosaic(images, labels, pseudo, grid=grid)
        if stage2 and self.train_cfg.step_negatives > 0:  # crack-free patches only: their labels stay background
            images = step_negatives(images, labels, share=self.train_cfg.step_negatives)
        if stage2 and self.train_cfg.confusers > 0:  # seams, joints, stains, bug holes...: background
            images, region = add_confusers(images, labels, share=self.train_cfg.confusers,
                                           cracked=self.train_cfg.confusers_on_cracks)
            pseudo = torch.where(region & (pseudo != 1), torch.zeros_like(pseudo), pseudo)  # beside a crack too
        x = to_input(images, channels_last=self.train_cfg.channels_last)
        if stage2:
            logits, map_logits = self.model.forward_dense(x)
            bce = F.binary_cross_entropy_with_logits(logits.float(), labels)
            loss = bce + self.train_cfg.lambda_l1 * pixel_loss(map_logits, pseudo)
        else:
            logits, low = self.model.forward_lowres(x)
            bce = F.binary_cross_entropy_with_logits(logits.float(), labels)
            loss = bce
            if use_l1:  # each cell's target: the mask around the pixel that cell sits on, after augmentation
                target = align_to(pseudo.float(), tuple(low.shape[-2:]), phase=self.model.cell_phase)  # [B,1,h,w]
                loss = loss + self.train_cfg.lambda_l1 * (low.float() - target).abs().mean()
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(labels),
                 sync_dist=True)  # the mean over every process's slice of the global batch
        self.log("train_bce", bce, on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        images, labels, _ = batch
        logits, _ = self.model.forward_lowres(to_input(images, channels_last=self.train_cfg.channels_last))
        logits = logits.float()
        self.val_auroc.update(torch.sigmoid(logits), labels.long())
        self.val_loss.update(F.binary_cross_entropy_with_logits(logits, labels, reduction="none"))
        self.val_acc.update(((logits > 0).float() == labels).float())

    def on_validation_epoch_end(self) -> None:
        # compute() syncs across processes; the values are then equal on every rank, and
        # sync_dist (a mean of equal values) only keeps Lightning from warning about epoch logs
        for name, metric in (("val_auroc", self.val_auroc), ("val_loss", self.val_loss), ("val_acc", self.val_acc)):
            self.log(name, metric.compute(), prog_bar=name != "val_loss", sync_dist=True)
            metric.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.snapshot

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        opt = torch.optim.Adam(self.model.parameters(), lr=self.train_cfg.lr, weight_decay=self.train_cfg.weight_decay)
        if self.train_cfg.lr_schedule == "constant":
            return opt
        steps = max(int(self.trainer.estimated_stepping_batches), 1)  # all epochs of this fit
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
