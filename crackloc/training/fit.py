"""Fit one model with Lightning: best-by-val-AUROC checkpoint, early stopping, resumable."""

from __future__ import annotations

import logging
import os
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

from crackloc.config import ModelConfig, TrainConfig
from crackloc.data.dataset import DecodedSplit, PatchDataset
from crackloc.errors import CracklocError
from crackloc.models.registry import build_model
from crackloc.training.module import EpochCSV, LitLocalizer

STEP_CHECKPOINT_EVERY = 50  # train steps between "last" checkpoints, so a kill loses little


def checkpoint_every() -> int:
    """Train steps between "last" checkpoints: $CRACKLOC_CHECKPOINT_EVERY or STEP_CHECKPOINT_EVERY."""
    value = os.environ.get("CRACKLOC_CHECKPOINT_EVERY", "")
    return int(value) if value.isdigit() and int(value) > 0 else STEP_CHECKPOINT_EVERY


# Lightning's start-up chatter (accelerator lines, a cloud-logger tip) is not for our users.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def make_trainer(train_cfg: TrainConfig, ckpt_dir: Path, csv_path: Path, *, epochs: int,
                 progress: bool) -> L.Trainer:
    """A Trainer with best/last checkpoints, early stopping on val AUROC and an epoch CSV."""
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_auroc", mode="max",
                           save_top_k=1, save_weights_only=True, enable_version_counter=False)
    # Lightning's step and epoch triggers are exclusive: two callbacks keep one last.ckpt fresh
    last_step = ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_train_steps=checkpoint_every(),
                                save_top_k=1, enable_version_counter=False)
    last_epoch = ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_epochs=1, save_top_k=1,
                                 enable_version_counter=False, save_on_train_epoch_end=True)
    stop = EarlyStopping(monitor="val_auroc", mode="max", patience=train_cfg.patience)
    return L.Trainer(
        max_epochs=epochs, accelerator=train_cfg.accelerator, devices=1,
        precision="bf16-mixed" if train_cfg.precision == "bf16" else "32-true",
        callbacks=[best, last_step, last_epoch, stop, EpochCSV(csv_path)], logger=False, enable_progress_bar=progress,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=10,
    )


def _resume_path(last: Path) -> str | None:
    """`last` if it is a loadable (tensors-only) checkpoint, None if there is none."""
    if not last.is_file():
        return None
    try:
        torch.load(last, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, or holds objects that could run code
        raise CracklocError(f"{last}: cannot resume from this checkpoint ({type(exc).__name__}); "
                            "delete it to restart this training stage") from None
    return str(last)


def fit_interruptibly(trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
    """`trainer.fit`, but Ctrl-C raises KeyboardInterrupt (→ exit code 130) instead of finishing quietly.

    Lightning catches the interrupt inside `fit`, marks the trainer interrupted, ignores SIGINT
    from then on and calls `sys.exit(1)`: the exit is turned back into an interrupt here (also
    when a Lightning version returns normally instead) and the SIGINT handler is restored.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
    if trainer.interrupted:
        raise KeyboardInterrupt


def fit_model(model_cfg: ModelConfig, train_cfg: TrainConfig, train: DecodedSplit, val: DecodedSplit, *,
              ckpt_dir: Path, csv_path: Path, epochs: int, pseudo: torch.Tensor | None = None,
              model: torch.nn.Module | None = None, progress: bool = True) -> torch.nn.Module:
    """Train `model_cfg` on `train`, select on `val`; resumes from `ckpt_dir/last.ckpt` if present.

    `model`: the model built from `model_cfg`, if the caller has built it already.
    Returns the best model (by validation AUROC), in eval mode, on the CPU.
    """
    ckpt_dir = Path(ckpt_dir)
    module = LitLocalizer(model if model is not None else build_model(model_cfg), model_cfg, train_cfg)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    train_dl = DataLoader(PatchDataset(train, pseudo), batch_size=train_cfg.batch_size, shuffle=True,
                          generator=gen, num_workers=train_cfg.num_workers, drop_last=len(train.labels) > train_cfg.batch_size)
    val_dl = DataLoader(PatchDataset(val), batch_size=max(train_cfg.batch_size, 64), shuffle=False,
                        num_workers=train_cfg.num_workers)
    trainer = make_trainer(train_cfg, ckpt_dir, csv_path, epochs=epochs, progress=progress)
    last = ckpt_dir / "last.ckpt"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
        fit_interruptibly(trainer, module, train_dl, val_dl, ckpt_path=_resume_path(last))
    best = ckpt_dir / "best.ckpt"
    if best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    model = module.model.to("cpu").to(memory_format=torch.contiguous_format)
    return model.eval()
