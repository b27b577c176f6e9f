"""The Lightning module: one loop for every registered model (BCE + λ·L1 to pseudo masks)."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAUROC

from crackloc.config import ModelConfig, TrainConfig
from crackloc.data.dataset import augment
from crackloc.io import atomic_write
from crackloc.tensors import to_input


class LitLocalizer(L.LightningModule):
    """Trains any registry model; the L1 term is used only by models that want pseudo masks."""

    def __init__(self, model: torch.nn.Module, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
        super().__init__()
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.model = model
        if train_cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.val_auroc = BinaryAUROC()
        self._val_loss: list[torch.Tensor] = []
        self._val_correct: list[torch.Tensor] = []
        self._val_n: list[int] = []

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        images, labels, pseudo = batch  # [B,3,S,S] uint8, [B], [B,1,h,w] or [B,0]
        use_l1 = self.model.uses_pseudo_masks and pseudo.dim() == 4 and self.train_cfg.lambda_l1 > 0
        if self.train_cfg.augment:
            images, pseudo = augment(images, pseudo)
        logits, low = self.model.forward_lowres(to_input(images, channels_last=self.train_cfg.channels_last))
        bce = F.binary_cross_entropy_with_logits(logits.float(), labels)
        loss = bce
        if use_l1:
            loss = loss + self.train_cfg.lambda_l1 * (low.float() - pseudo).abs().mean()
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(labels))
        self.log("train_bce", bce, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        images, labels, _ = batch
        logits, _ = self.model.forward_lowres(to_input(images, channels_last=self.train_cfg.channels_last))
        logits = logits.float()
        self.val_auroc.update(torch.sigmoid(logits), labels.long())
        self._val_loss.append(F.binary_cross_entropy_with_logits(logits, labels, reduction="sum"))
        self._val_correct.append(((logits > 0).float() == labels).sum())
        self._val_n.append(len(labels))

    def on_validation_epoch_end(self) -> None:
        count = max(sum(self._val_n), 1)
        self.log("val_auroc", self.val_auroc.compute(), prog_bar=True)
        self.log("val_loss", torch.stack(self._val_loss).sum() / count)
        self.log("val_acc", torch.stack(self._val_correct).sum() / count, prog_bar=True)
        self.val_auroc.reset()
        self._val_loss.clear()
        self._val_correct.clear()
        self._val_n.clear()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.train_cfg.lr,
                                weight_decay=self.train_cfg.weight_decay)


class EpochCSV(L.Callback):
    """Append one row of logged metrics per epoch to a CSV (rewritten atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.t0 = time.time()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step,
               "train_loss": m.get("train_loss_epoch", float("nan")), "val_loss": m.get("val_loss"),
               "val_auroc": m.get("val_auroc"), "val_acc": m.get("val_acc"),
               "elapsed_s": round(time.time() - self.t0, 1)}
        rows = []
        if self.path.is_file():
            with self.path.open(encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < row["epoch"]]
        rows.append(row)

        def write(f) -> None:
            w = csv.DictWriter(f, fieldnames=list(row))
            w.writeheader()
            w.writerows(rows)
        atomic_write(self.path, write, binary=False)
