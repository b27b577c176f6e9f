"""Slow tier (`-m slow`, ~60 s on 2 free cores): DDP training on CPU (gloo), killed and resumed, against one process.

`crackloc train --devices 2 --strategy ddp` runs in a subprocess (Lightning's launcher re-runs
the command line for rank 1), is SIGKILLed with its children mid-way through the teacher's epoch
(after the step-3 Lightning checkpoint), and is finished with `--resume --devices 2`: the teacher
continues from that checkpoint under DDP, then the student trains. The single-process reference
trains the same config in-process with the same GLOBAL batch. (The teacher is the stage killed:
it reaches validation AUROC 1.0 in one epoch either way, so the student's test metrics compare
DDP with one process rather than an 8-step student restarted mid-epoch.)

Batch semantics: `--batch-size` is the global batch. Here 8 = 1 process x 8 images = 2 processes
x 4 images, so both runs take the same optimizer steps per epoch (checked from the epoch CSVs;
were the batch per device, DDP would take half as many).

Task: as tests/test_resume.py (synthetic 48 px patches with wide, dark cracks, tiny preset at
64 px) with 200 patches: 64 training images (8 steps per epoch), 30 validation and 30 test
images, teacher 1 epoch + student 1 epoch.

Tolerances (CPU, bf16 autocast): DDP cannot be bit-identical to one process on a CPU (torch's
SyncBatchNorm refuses CPU tensors, so BatchNorm sees 4 images per process instead of 8; the DDP
data order comes from a DistributedSampler; and this run was killed and resumed). Test AUROC
must be within AUROC_TOL and accuracy at the validation threshold within ACC_TOL (7 of 30 images;
the threshold is chosen on 30 validation images after one epoch) of the one-process run.
Measured differences: docs/scale.md.
Validation is gathered over all ranks: the logged val_loss/val_acc of the DDP run equal those
recomputed in one process from the saved model on the whole validation split (VAL_TOL; ranks
that each logged their own half would miss it by ~0.1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from crackloc.cli import main
from crackloc.training.fit import epoch_rows
from tests.helpers import start_held, wait_held

AUROC_TOL = 0.15
ACC_TOL = 0.25
VAL_TOL = 0.01
FAST = {"data.image_size": 64, "data.max_train": 64, "train.batch_size": 8, "train.epochs": 1,
        "train.teacher_epochs": 1, "model.pretrained": "none", "teacher.pretrained": "none",
        "train.accelerator": "cpu"}
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, config.yaml): 200 learnable synthetic patches, the tiny preset at 64 px on the CPU."""
    from crackloc.config import preset, save_config
    from crackloc.data.synthetic import make_crack_image
    from crackloc.io import save_png

    root = tmp_path_factory.mktemp("ddp")
    for i in range(200):
        img, _ = make_crack_image(48, 48, crack=i % 2 == 0, seed=i, width=3.0, darkness=0.6)
        sub = "Positive" if i % 2 == 0 else "Negative"
        save_png(root / "data" / sub / f"{i:04d}.png", (img * 255).round().byte().permute(1, 2, 0).numpy())
    save_config(preset("tiny", **FAST), root / "config.yaml")
    return root / "data", root / "config.yaml"


@pytest.fixture(scope="module")
def single(task, tmp_path_factory) -> Path:
    """The one-process reference run (in-process), batch 8, one thread.

    One thread as each DDP process has: on a 2-core machine shared with other jobs, two OpenMP
    threads made this run 5-15x slower (docs/scale.md).
    """
    data, cfg = task
    out = tmp_path_factory.mktemp("runs") / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.monotonic()
    try:
        assert main(["train", "--config", str(cfg), "--data", str(data), "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    TIMES["single"] = time.monotonic() - t0
    return out


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "crackloc.cli", "train", *map(str, args)]


def _env() -> dict[str, str]:
    return {**os.environ, "CRACKLOC_CHECKPOINT_EVERY": "3", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _start_and_kill(args: list, log: Path) -> None:
    """Run `crackloc train ARGS` in its own session, held by rank 0 at the teacher's 4th step (the
    step-3 checkpoint is whole on disk; rank 1 waits in its next all-reduce); SIGKILL them all there."""
    marker = log.with_suffix(".held")
    with log.open("w") as err:
        proc = start_held(["train", *args], at="crackloc.training.module:LitLocalizer.training_step", call=4,
                          marker=marker, env=_env(), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            wait_held(proc, marker, timeout=240)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _steps(log_dir: Path) -> list[tuple[int, int]]:
    return [(int(r["epoch"]), int(r["step"])) for r in epoch_rows(log_dir)]


def _test(run: Path) -> tuple[float, float]:
    m = json.loads((run / "metrics.json").read_text())
    return m["at_val_threshold"]["auroc"], m["at_val_threshold"]["accuracy"]


def _whole_val(run: Path) -> tuple[float, float]:
    """(BCE, accuracy at logit 0) of RUN/model.pt on the whole validation split, in one process."""
    from crackloc.config import load_config
    from crackloc.data.manifest import load_splits, resolve_manifest
    from crackloc.models.checkpoint import load_model
    from crackloc.tensors import predict_batches

    cfg = load_config(run / "config.yaml")
    root, rows, _ = resolve_manifest(cfg, progress=False, check=False)
    val = load_splits(cfg, root, rows, ("val",), progress=False)["val"]
    probs, _ = predict_batches(load_model(run / "model.pt")[0], val.images, precision=cfg.train.precision)
    bce = F.binary_cross_entropy(probs.double().clamp(1e-7, 1 - 1e-7), val.labels.double())
    return float(bce), float(((probs > 0.5).float() == val.labels).float().mean())


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_killed_and_resumed_matches_one_process(task, single, tmp_path):
    data, cfg = task
    run = tmp_path / "ddp"
    t0 = time.monotonic()
    _start_and_kill(["--config", cfg, "--data", data, "--out", run, "--devices", 2, "--strategy", "ddp"],
                    tmp_path / "first.log")
    TIMES["ddp_until_killed"] = time.monotonic() - t0
    assert not (run / "teacher.pt").exists(), "not killed mid-teacher"
    assert torch.load(run / "checkpoints/teacher/last.ckpt", weights_only=True)["global_step"] == 3
    t0 = time.monotonic()
    done = subprocess.run(_cli("--out", run, "--resume", "--devices", 2), env=_env(), capture_output=True,
                          text=True, timeout=300)
    TIMES["ddp_resume"] = time.monotonic() - t0
    print(f"\nwall seconds: {TIMES}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test: AUROC") == 1  # rank 0 alone evaluates and reports

    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (saved["devices"], saved["num_nodes"], saved["strategy"], saved["batch_size"]) == (2, 1, "ddp", 8)
    # global batch: the same optimizer steps per epoch as one process with batch 8 (64 / 8 = 8)
    for name in ("logs/teacher", "logs/student"):
        assert _steps(run / name) == _steps(single / name) == [(0, 8)], name
    # rank 0's files only, written whole: no leftovers of atomic writes
    assert not [p for p in run.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    # model.pt holds the trained (best) weights that every rank ended with
    best = torch.load(run / "checkpoints/student/best.ckpt", weights_only=True)["state_dict"]
    model = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(model[k], best[f"model.{k}"]) for k in model)

    # validation metrics are over the whole validation split, not one rank's shard
    logged = epoch_rows(run / "logs/student")[-1]
    bce, acc = _whole_val(run)
    assert abs(logged["val_loss"] - bce) <= VAL_TOL and abs(logged["val_acc"] - acc) <= VAL_TOL, (logged, bce, acc)

    (auroc_ddp, acc_ddp), (auroc_one, acc_one) = _test(run), _test(single)
    print(f"test AUROC ddp {auroc_ddp:.4f} vs one process {auroc_one:.4f}; "
          f"accuracy {acc_ddp:.4f} vs {acc_one:.4f}")
    assert abs(auroc_ddp - auroc_one) <= AUROC_TOL and abs(acc_ddp - acc_one) <= ACC_TOL


def _run(argv: list, capsys) -> tuple[int, list[str]]:
    rc = main([str(a) for a in argv])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("crackloc ")]
    return rc, err


def test_batch_must_split_over_the_devices_and_ddp_needs_the_command_line(task, tmp_path, capsys):
    data, cfg = task
    out = tmp_path / "run"
    rc, err = _run(["train", "--config", cfg, "--data", data, "--out", out, "--devices", 2, "--batch-size", 7],
                   capsys)
    assert rc == 2 and len(err) == 1 and "global batch" in err[0] and "multiple" in err[0], err
    # in-process (pytest here), Lightning's launcher would re-run pytest's command line: refused
    rc, err = _run(["train", "--config", cfg, "--data", data, "--out", out, "--devices", 2, "--strategy", "ddp"],
                   capsys)
    assert rc == 2 and len(err) == 1 and "re-running the command line" in err[0], err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["train", "--out", str(out), "--strategy", "horovod"])
    with pytest.raises(SystemExit):
        main(["train", "--out", str(out), "--devices", "0"])
    assert "--devices=0 is outside [1, 1024]" in capsys.readouterr().err


def test_gpus_per_run_sets_each_runs_devices_and_reaches_the_runner(crack_folder, tmp_path, capsys, monkeypatch):
    import crackloc.experiments.runner as runner

    spec = runner.ExperimentSpec(out=tmp_path / "exp", preset="tiny", methods=["crackloc"], seeds=[0],
                                 gpus_per_run=4)
    cfg = runner.method_config(spec, "crackloc", 0, tmp_path / "split.csv")
    assert (cfg.train.devices, cfg.train.strategy, cfg.train.accelerator) == (4, "ddp_spawn", "gpu")
    spec.gpus_per_run = 0
    cfg = runner.method_config(spec, "crackloc", 0, tmp_path / "split.csv")
    assert (cfg.train.devices, cfg.train.strategy, cfg.train.accelerator) == (1, "auto", "auto")

    seen = []
    monkeypatch.setattr(runner, "run_experiment", lambda spec: seen.append(spec) or {"methods": {}})
    argv = ["experiment", "--data", crack_folder, "--out", tmp_path / "exp", "--preset", "tiny", "--no-report"]
    assert _run([*argv, "--gpus-per-run", 2], capsys)[0] == 0
    assert seen[-1].gpus_per_run == 2
    assert _run(argv, capsys)[0] == 0 and seen[-1].gpus_per_run == 0
    monkeypatch.undo()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, err = _run([*argv, "--gpus-per-run", 2], capsys)
    assert rc == 2 and len(err) == 1 and "has 0 CUDA GPU(s)" in err[0], err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    rc, err = _run([*argv, "--gpus-per-run", 3], capsys)  # the tiny preset's batch 16 does not split over 3
    assert rc == 2 and len(err) == 1 and "global batch" in err[0], err
    assert not (tmp_path / "exp").exists()
