"""Training images/s of the student step (forward + BCE + λ·L1 + backward + Adam): fp32, bf16, auto.

`auto` is what `crackloc train` runs by default (`--precision auto`): bf16 where the CPU has
native bf16, else fp32. The three are timed interleaved in one run.

    python benchmarks/bench_train.py [--batch 32] [--rounds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import warnings

import torch
import torch.nn.functional as F

from benchmarks.common import cpu_model, interleaved, table
from crackloc.config import ModelConfig, TrainConfig
from crackloc.models import build_model
from crackloc.training.fit import train_precision


def step_fn(*, bf16: bool, batch: int):
    """A closure doing one student training step on random data."""
    model = build_model(ModelConfig(pretrained="none")).train()
    x = torch.rand(batch, 3, 224, 224)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch) > 0.5).float()
    pseudo = torch.rand(batch, 1, 14, 14)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step() -> None:
        with ctx():
            logits, low = model.forward_lowres(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y) + 0.5 * (low.float() - pseudo).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    auto = train_precision(TrainConfig(accelerator="cpu"))
    secs = interleaved({"fp32": step_fn(bf16=False, batch=a.batch), "bf16": step_fn(bf16=True, batch=a.batch),
                        "auto": step_fn(bf16=auto == "bf16", batch=a.batch)}, rounds=a.rounds)
    ips = {k: a.batch / v for k, v in secs.items()}
    print(f"CPU: {cpu_model()}; student step, batch {a.batch}, 224 px, median of {a.rounds} interleaved rounds\n")
    print(table([[k if k != "auto" else f"auto (runs {auto})", f"{v:.1f}"] for k, v in ips.items()],
                ["precision", "training images/s"]))
    best = min(secs["fp32"], secs["bf16"])
    print(f"\nbf16 / fp32 speed-up: {ips['bf16'] / ips['fp32']:.2f}×; auto time / faster of fp32 and bf16: "
          f"{secs['auto'] / best:.2f} (goal ≤ 1.10)")


if __name__ == "__main__":
    main()
