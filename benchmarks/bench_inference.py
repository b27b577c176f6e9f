"""Patches/s at 224 px: bare ResNet-18 (backbone + GAP + FC), the paper's model and stage 2, by precision.

Precisions: fp32 eager, bf16 autocast + channels_last, and `auto` (the default of every command:
bf16 where the CPU has native bf16, else fp32), plus ONNX Runtime (fp32) and, with --compile,
torch.compile. All timed in one run, interleaved. Prints a Markdown table, the CPU's capability,
and auto's time over the faster of fp32 and bf16 (goal ≤ 1.10).

    python -m benchmarks.bench_inference [--checkpoint MODEL.pt] [--batch 32] [--rounds 5] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import cpu_model, interleaved, table
from crackloc.config import ModelConfig
from crackloc.models import build_model
from crackloc.tensors import autocast_for, resolve_precision


class BareResNet18(nn.Module):
    """torchvision ResNet-18 with a 1-logit FC: the cheapest crack classifier, no heatmap."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet18

        self.net = resnet18(weights=None, num_classes=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def runner(model: nn.Module, x: torch.Tensor, *, bf16: bool, compile: bool = False):
    """A closure running one forward pass (bf16 → autocast + channels_last; optional torch.compile)."""
    model = model.eval()
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    ctx = (lambda: autocast_for("cpu", "bf16")) if bf16 else contextlib.nullcontext

    def run() -> None:
        with torch.inference_mode(), ctx():
            model(x)
    return run


def onnx_runner(model: nn.Module, x: torch.Tensor, path: Path, *, bare: bool):
    """Export `model` and return a closure running it in ONNX Runtime."""
    if bare:
        import onnxruntime as ort

        torch.onnx.export(model.eval(), (x[:1],), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}}, dynamo=False)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        arr = x.numpy()
        return lambda: sess.run(None, {"image": arr})
    from crackloc.inference.export import OnnxPredictor, export_onnx

    export_onnx(model, path, image_size=x.shape[-1])
    pred = OnnxPredictor(path)
    return lambda: pred(x)


PRECISIONS = ("fp32 eager", "bf16 + channels_last", "auto")


def _models(checkpoint: str | None) -> dict[str, nn.Module]:
    from crackloc.inference.predictor import BUNDLED_MODEL
    from crackloc.models.checkpoint import load_model

    proposed = load_model(checkpoint)[0] if checkpoint else build_model(ModelConfig(pretrained="none"))
    return {"bare ResNet-18": BareResNet18(), "paper's model": proposed, "stage 2 (bundled)": load_model(BUNDLED_MODEL)[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="paper's-model file (default: random weights; speed is the same)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (bf16 where native, else fp32)")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    models, auto = _models(a.checkpoint), resolve_precision("auto", "cpu")
    x = torch.rand(a.batch, 3, 224, 224)
    backends = [*PRECISIONS, *(["auto + torch.compile"] if a.compile else []), "ONNX Runtime fp32"]
    with tempfile.TemporaryDirectory() as tmp:
        fns = {}
        for i, (name, model) in enumerate(models.items()):
            fns[(name, "fp32 eager")] = runner(model, x, bf16=False)
            fns[(name, "bf16 + channels_last")] = runner(model, x, bf16=True)
            fns[(name, "auto")] = runner(model, x, bf16=auto == "bf16")
            if a.compile:
                fns[(name, "auto + torch.compile")] = runner(model, x, bf16=auto == "bf16", compile=True)
            fns[(name, "ONNX Runtime fp32")] = onnx_runner(model, x, Path(tmp) / f"{i}.onnx", bare=i == 0)
        secs = interleaved(fns, rounds=a.rounds)
    print(f"CPU: {cpu_model()}; batch {a.batch}, 224 px, median of {a.rounds} interleaved rounds; "
          f"auto runs {'bf16' if auto == 'bf16' else 'fp32'} here\n")
    rows = [[b if b != "auto" else f"auto (= {auto})", *(f"{a.batch / secs[(m, b)]:.1f}" for m in models)]
            for b in backends]
    print(table(rows, ["backend", *(f"{m} patches/s" for m in models)]))
    worst = max(secs[(m, "auto")] / min(secs[(m, "fp32 eager")], secs[(m, "bf16 + channels_last")]) for m in models)
    ratios = {m: secs[(m, "bf16 + channels_last")] / secs[(m, "fp32 eager")] for m in models}
    print("\nbf16 time / fp32 time: " + ", ".join(f"{m} {r:.2f}" for m, r in ratios.items()))
    print(f"auto time / faster of fp32 and bf16, worst model: {worst:.2f} (goal ≤ 1.10)")


if __name__ == "__main__":
    main()
