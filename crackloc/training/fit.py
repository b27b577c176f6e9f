"""Fit one model with Lightning: best-by-val-AUROC checkpoint, early stopping, resumable, multi-device.

Several devices (`train.devices` × `train.num_nodes` > 1) train with data-parallel DDP.
`train.batch_size` is the GLOBAL batch: each of the W processes takes batch_size / W images of
every optimizer step, and the W slices of step k are the k-th block of one shuffled order (a
`DistributedSampler` seeded with `train.seed` and the epoch), so a step sees the same images
whatever W is. Validation shards the images without padding (each scored once) and the
metrics are gathered across processes before early stopping and the best checkpoint read them.

Two ways to run several processes (`Ranks` tells which one a process is in):
- `ddp` (Lightning's own launcher, torchrun, SLURM): every process runs the whole pipeline of
  `crackloc.training.pipeline`; rank 0 alone writes the run folder.
- `ddp_spawn`: the pipeline runs in one process and each `trainer.fit` spawns the workers.
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, DistributedSampler

from crackloc.config import ModelConfig, TrainConfig
from crackloc.data.dataset import DecodedSplit, PatchDataset
from crackloc.errors import CracklocError
from crackloc.models.registry import build_model
from crackloc.tensors import resolve_precision
from crackloc.training.module import CONFIG_KEY, LitLocalizer

STEP_CHECKPOINT_EVERY = 50  # train steps between "last" checkpoints, so a kill loses little


def checkpoint_every() -> int:
    """Train steps between "last" checkpoints: $CRACKLOC_CHECKPOINT_EVERY or STEP_CHECKPOINT_EVERY."""
    value = os.environ.get("CRACKLOC_CHECKPOINT_EVERY", "")
    return int(value) if value.isdigit() and int(value) > 0 else STEP_CHECKPOINT_EVERY


# Lightning's start-up chatter (accelerator lines, a cloud-logger tip) is not for our users.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def world_size(train_cfg: TrainConfig) -> int:
    """Training processes: devices per node × nodes."""
    return train_cfg.devices * train_cfg.num_nodes


def per_device_batch(train_cfg: TrainConfig) -> int:
    """Images per process and step: the global `batch_size` split evenly over the processes."""
    world = world_size(train_cfg)
    if train_cfg.batch_size % world:
        raise CracklocError(f"train.batch_size={train_cfg.batch_size} is the global batch and must split evenly "
                            f"over {train_cfg.devices} device(s) x {train_cfg.num_nodes} node(s) = {world} "
                            "processes; choose a multiple of that")
    return train_cfg.batch_size // world


def _strategy(train_cfg: TrainConfig) -> str:
    """Lightning's strategy name: one process trains alone; DDP looks for parameters a loss does not
    reach (e.g. PSOL's regressor when lambda_l1 = 0), which plain DDP would stop on."""
    if world_size(train_cfg) == 1:
        return "auto"
    return {"ddp": "ddp_find_unused_parameters_true",
            "ddp_spawn": "ddp_spawn_find_unused_parameters_true"}.get(train_cfg.strategy, train_cfg.strategy)


def _sync_batchnorm(train_cfg: TrainConfig) -> bool:
    """BatchNorm statistics over the global batch where torch can (GPUs); torch's SyncBatchNorm
    refuses CPU tensors, so on CPUs each process normalises over its own batch_size / W images."""
    if world_size(train_cfg) == 1:
        return False
    return train_cfg.accelerator in ("gpu", "cuda") or (train_cfg.accelerator == "auto" and torch.cuda.is_available())


def _trainer_kwargs(train_cfg: TrainConfig) -> dict[str, Any]:
    return {"accelerator": train_cfg.accelerator, "devices": train_cfg.devices, "num_nodes": train_cfg.num_nodes,
            "strategy": _strategy(train_cfg), "sync_batchnorm": _sync_batchnorm(train_cfg),
            "use_distributed_sampler": False}  # LitData below shards the data itself


def train_precision(train_cfg: TrainConfig) -> str:
    """The precision training runs in: `train.precision` resolved for the device Lightning will pick."""
    on_gpu = train_cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return resolve_precision(train_cfg.precision, "cuda" if on_gpu else "cpu")


def make_trainer(train_cfg: TrainConfig, ckpt_dir: Path, log_dir: Path, *, epochs: int,
                 progress: bool) -> L.Trainer:
    """A Trainer with best (by `train_cfg.select_by`) and last checkpoints, early stopping, and
    Lightning's `CSVLogger` in `log_dir/version_N/metrics.csv` (a new version per --resume; `epoch_rows`)."""
    monitor, mode = {"val_auroc": ("val_auroc", "max"), "val_loss": ("val_loss", "min")}.get(
        train_cfg.select_by, (None, "max"))
    selection = [] if monitor is None else [
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                        save_weights_only=True, enable_version_counter=False),
        EarlyStopping(monitor=monitor, mode=mode, patience=train_cfg.patience)]
    # Lightning's step and epoch triggers are exclusive: two callbacks keep one last.ckpt fresh
    last_step = ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_train_steps=checkpoint_every(),
                                save_top_k=1, enable_version_counter=False)
    last_epoch = ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_epochs=1, save_top_k=1,
                                 enable_version_counter=False, save_on_train_epoch_end=True)
    return L.Trainer(
        max_epochs=epochs, **_trainer_kwargs(train_cfg),
        precision="bf16-mixed" if train_precision(train_cfg) == "bf16" else "32-true",
        callbacks=[*selection, last_step, last_epoch], logger=CSVLogger(log_dir.parent, name=log_dir.name),
        enable_progress_bar=progress,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=10,
    )


class _Shard(DistributedSampler):
    """Every `num_replicas`-th index from `rank`, in order and without padding: each image once."""

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]


class LitData(L.LightningDataModule):
    """The training and validation loaders, made in the process that uses them (spawned workers too).

    One process: shuffled by a generator seeded with `train.seed`, as before multi-device support.
    W processes: each takes batch_size / W images per step from one `DistributedSampler` order
    (seed, epoch) and drops the last partial global batch, as one process does; validation is
    sharded without padding.
    """

    def __init__(self, train: DecodedSplit, val: DecodedSplit, pseudo: torch.Tensor | None,
                 train_cfg: TrainConfig) -> None:
        super().__init__()
        self.train_set, self.val_set, self.pseudo, self.train_cfg = train, val, pseudo, train_cfg

    def _ranks(self) -> tuple[int, int]:
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        cfg, (rank, world) = self.train_cfg, self._ranks()
        data = PatchDataset(self.train_set, self.pseudo)
        drop_last = len(self.train_set.labels) > cfg.batch_size
        if world == 1:
            gen = torch.Generator().manual_seed(cfg.seed)
            return DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                              num_workers=cfg.num_workers, drop_last=drop_last)
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
        return DataLoader(data, batch_size=cfg.batch_size // world, sampler=sampler, num_workers=cfg.num_workers,
                          drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        cfg, (rank, world) = self.train_cfg, self._ranks()
        data = PatchDataset(self.val_set)
        sampler = _Shard(data, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        return DataLoader(data, batch_size=max(cfg.batch_size, 64), shuffle=False, sampler=sampler,
                          num_workers=cfg.num_workers)


def _resume_path(last: Path, module: LitLocalizer) -> str | None:
    """`last` if it is a loadable (tensors-only) checkpoint made with `module`'s settings, None if there is none.

    A checkpoint whose settings (or, from older versions, weights) differ from the run's config
    (a config.yaml edited between the interruption and `--resume`) is refused with the differences.
    """
    if not last.is_file():
        return None
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, or holds objects that could run code
        raise CracklocError(f"{last}: cannot resume from this checkpoint ({type(exc).__name__}); "
                            "delete it to restart this training stage") from None
    saved, now = ckpt.get(CONFIG_KEY), module.snapshot
    if isinstance(saved, dict):
        diff = [f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(saved) | set(now))
                if saved.get(k) != now.get(k)]
    else:  # a checkpoint of an older version: compare the weights' names and shapes
        state, mine = ckpt.get("state_dict", {}), module.state_dict()
        diff = [f"weight {k} {'missing' if k not in state else 'unexpected'}" for k in sorted(set(state) ^ set(mine))]
        diff += [f"weight {k}: shape {tuple(v.shape)} there, {tuple(mine[k].shape)} now" for k, v in state.items()
                 if k in mine and tuple(v.shape) != tuple(mine[k].shape)]
    if diff:
        raise CracklocError(f"{last}: the run's config.yaml no longer matches this checkpoint ({'; '.join(diff[:4])}"
                            f"{'; …' if len(diff) > 4 else ''}): restore the config the run was started with, or "
                            f"delete {last.parent} to restart this stage") from None
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
              ckpt_dir: Path, log_dir: Path, epochs: int, pseudo: torch.Tensor | None = None,
              model: torch.nn.Module | None = None, progress: bool = True) -> torch.nn.Module:
    """Train `model_cfg` on `train`, select on `val`; resumes from `ckpt_dir/last.ckpt` if present.

    `model`: the model built from `model_cfg`, if the caller has built it already.
    Returns the best model (by validation AUROC), in eval mode, on the CPU; under DDP every
    process returns rank 0's best weights.
    """
    ckpt_dir = Path(ckpt_dir)
    per_device_batch(train_cfg)
    if world_size(train_cfg) > len(val.labels):
        raise CracklocError(f"{len(val.labels)} validation images cannot be shared by {world_size(train_cfg)} "
                            "processes; use fewer devices or more validation images")
    module = LitLocalizer(model if model is not None else build_model(model_cfg), model_cfg, train_cfg)
    trainer = make_trainer(train_cfg, ckpt_dir, Path(log_dir), epochs=epochs, progress=progress)
    last = ckpt_dir / "last.ckpt"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
        # DDP: a [1, C] classifier's gradient and its bucket differ in strides only (benign)
        warnings.filterwarnings("ignore", message=".*Grad strides do not match bucket view strides.*")
        # Lightning's own pytree helper still builds torch's deprecated LeafSpec (torch >= 2.10)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        fit_interruptibly(trainer, module, datamodule=LitData(train, val, pseudo, train_cfg),
                          ckpt_path=_resume_path(last, module))
    best = ckpt_dir / "best.ckpt"
    state = None
    if trainer.is_global_zero and best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    state = trainer.strategy.broadcast(state)  # DDP: rank 0's file, not each node's view of it
    if state is not None:
        module.load_state_dict(state)
    model = module.model.to("cpu").to(memory_format=torch.contiguous_format)
    return model.eval()


EPOCH_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_auroc", "val_acc")


def epoch_rows(log_dir: str | Path) -> list[dict[str, float]]:
    """One row per finished epoch (`EPOCH_COLUMNS`; step = optimizer steps after the epoch) from the
    `CSVLogger` files of `log_dir/version_*/metrics.csv`. A later version (a --resume) replaces the
    epochs it ran again; an epoch cut off before its end has no row; a torn last line is skipped."""
    rows: list[dict[str, str]] = []
    for version in sorted(Path(log_dir).glob("version_*"), key=lambda p: int(p.name.split("_")[-1])):
        path = version / "metrics.csv"
        if not path.is_file():
            continue
        with path.open(newline="", encoding="utf-8") as f:
            new = [r for r in csv.DictReader(f) if (r.get("epoch") or "").isdigit() and (r.get("step") or "").isdigit()]
        if new:
            first = min(int(r["epoch"]) for r in new)
            rows = [r for r in rows if int(r["epoch"]) < first] + new
    out = []
    for epoch in sorted({int(r["epoch"]) for r in rows}):
        mine = [r for r in rows if int(r["epoch"]) == epoch]
        if not any(r.get("train_loss_epoch") for r in mine):
            continue

        def last(key: str, rows: list[dict[str, str]] = mine) -> float:
            return next((float(r[key]) for r in reversed(rows) if r.get(key)), float("nan"))
        out.append({"epoch": epoch, "step": max(int(r["step"]) for r in mine) + 1,  # logged at global_step - 1
                    "train_loss": last("train_loss_epoch"), "val_loss": last("val_loss"),
                    "val_auroc": last("val_auroc"), "val_acc": last("val_acc")})
    return out


def _is_crackloc_train() -> bool:
    """Whether this process runs `crackloc train` (the command Lightning's launcher re-runs)."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    name = spec.name if spec is not None else Path(sys.argv[0]).name
    return name.startswith("crackloc") and sys.argv[1:2] == ["train"]


def start(train_cfg: TrainConfig) -> Ranks:
    """The processes that train together, started: the global batch is checked first (refused before
    any other process starts), then Lightning's launcher starts a node's other processes (`Ranks.launch`)."""
    per_device_batch(train_cfg)
    ranks = Ranks(train_cfg)
    ranks.launch()
    return ranks


class Ranks:
    """The processes that run the training pipeline together.

    One process (`world == 1`) unless `strategy` is DDP over several devices and its processes
    each run the pipeline (`ddp`: Lightning's launcher, torchrun, SLURM, Ray Train); `ddp_spawn` spawns
    workers inside each `fit`, so its pipeline is one process. `rank`/`world` are known before any
    process group exists (Lightning's cluster environment); `connect` makes the group.
    """

    def __init__(self, train_cfg: TrainConfig | None = None) -> None:
        self.rank, self.world, self._strategy, self.connected = 0, 1, None, False
        self.precision = train_precision(train_cfg) if train_cfg is not None else "32"  # what training runs in
        if train_cfg is None:
            return
        started = int(os.environ.get("WORLD_SIZE", "1")) if torch.distributed.is_torchelastic_launched() else 1
        if world_size(train_cfg) == 1 and started > 1:  # each would think it trains alone, in one folder
            raise CracklocError(f"torchrun started {started} processes, but train.devices x train.num_nodes = 1; "
                                "pass --devices (processes per node) and --num-nodes")
        if world_size(train_cfg) == 1:
            return
        try:
            probe = L.Trainer(**_trainer_kwargs(train_cfg), logger=False, enable_checkpointing=False,
                              enable_progress_bar=False, enable_model_summary=False)
        except (MisconfigurationException, ValueError, RuntimeError) as exc:
            raise CracklocError(f"train.accelerator={train_cfg.accelerator} devices={train_cfg.devices} "
                                f"num_nodes={train_cfg.num_nodes} strategy={train_cfg.strategy}: "
                                f"{str(exc).splitlines()[0]}") from None
        launcher = probe.strategy.launcher  # 'ddp' re-runs the script (not interactive-compatible), 'ddp_spawn'
        if launcher is not None and (train_cfg.strategy == "ddp_spawn" or launcher.is_interactive_compatible):
            return  # ddp_spawn / ddp_fork: each fit spawns its workers
        if probe.world_size != world_size(train_cfg):  # torchrun / SLURM / Ray decide it, not the config
            raise CracklocError(f"the launcher started {probe.world_size} processes, but train.devices x "
                                f"train.num_nodes = {train_cfg.devices} x {train_cfg.num_nodes}; make them agree "
                                "(--devices = processes per node, --num-nodes = nodes)")
        self.rank, self.world, self._strategy = probe.global_rank, probe.world_size, probe.strategy

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def launch(self) -> None:
        """Local rank 0 under Lightning's own launcher: start the other processes of this node now.

        They re-run this command line (`sys.argv`), so it must be `crackloc train`. Under
        torchrun, SLURM or Ray Train, and in the processes Lightning started, they exist already
        and this does nothing.
        """
        launcher = self._strategy.launcher if self._strategy is not None else None
        if launcher is None or self._strategy.cluster_environment.creates_processes_externally:
            return
        if not _is_crackloc_train():
            raise CracklocError("strategy 'ddp' starts the other processes by re-running the command line, "
                                f"which is not `crackloc train` here ({' '.join(sys.argv[:2])}); use strategy "
                                "'ddp_spawn' from Python or `crackloc experiment`, or start the processes with "
                                "torchrun (docs/scale.md)")
        launcher.launch(lambda: None)

    def stop_others(self) -> None:
        """Kill the processes this one launched (rank 0 failed: they would wait for it forever)."""
        launcher = self._strategy.launcher if self._strategy is not None else None
        if launcher is not None:
            launcher.kill(signal.SIGKILL)

    def connect(self) -> None:
        """Join the process group (gloo on CPUs, NCCL on GPUs); the fits reuse it."""
        if self._strategy is not None and not self.connected:
            self._strategy.setup_environment()
            self.connected = True

    def barrier(self) -> None:
        if self.world > 1:
            self.connect()
            self._strategy.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        self.connect()
        return self._strategy.broadcast(obj)
