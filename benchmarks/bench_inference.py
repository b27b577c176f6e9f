"""Patches/s at 224 px: bare ResNet-18 (backbone + GAP + FC) vs the proposed model.

Backends: fp32 eager, bf16 autocast + channels_last, ONNX Runtime (fp32), all timed in one
run, interleaved. Prints a Markdown table and the ratios the deployment issue asks for.

    python benchmarks/bench_inference.py [--checkpoint MODEL.pt] [--batch 32] [--rounds 5]
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
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="proposed-model file (default: random weights; speed is the same)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    if a.checkpoint:
        from crackloc.models.checkpoint import load_model

        proposed = load_model(a.checkpoint)[0]
    else:
        proposed = build_model(ModelConfig(pretrained="none"))
    bare = BareResNet18()
    x = torch.rand(a.batch, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        fns = {
            ("bare", "fp32 eager"): runner(bare, x, bf16=False),
            ("proposed", "fp32 eager"): runner(proposed, x, bf16=False),
            ("bare", "bf16 + channels_last"): runner(bare, x, bf16=True),
            ("proposed", "bf16 + channels_last"): runner(proposed, x, bf16=True),
            ("bare", "bf16 + channels_last + torch.compile"): runner(bare, x, bf16=True, compile=True),
            ("proposed", "bf16 + channels_last + torch.compile"): runner(proposed, x, bf16=True, compile=True),
            ("bare", "ONNX Runtime fp32"): onnx_runner(bare, x, Path(tmp) / "bare.onnx", bare=True),
            ("proposed", "ONNX Runtime fp32"): onnx_runner(proposed, x, Path(tmp) / "p.onnx", bare=False),
        }
        secs = interleaved(fns, rounds=a.rounds)
    ips = {k: a.batch / v for k, v in secs.items()}
    base = ips[("bare", "fp32 eager")]
    rows = []
    for backend in ("fp32 eager", "bf16 + channels_last", "bf16 + channels_last + torch.compile",
                    "ONNX Runtime fp32"):
        b, m = ips[("bare", backend)], ips[("proposed", backend)]
        rows.append([backend, f"{b:.1f}", f"{m:.1f}", f"{b / m:.3f}", f"{m / base:.2f}×"])
    print(f"CPU: {cpu_model()}; batch {a.batch}, 224 px, median of {a.rounds} interleaved rounds\n")
    print(table(rows, ["backend", "bare ResNet-18 patches/s", "proposed patches/s (heatmap incl.)",
                       "time ratio proposed/bare", "proposed vs bare fp32 eager"]))


if __name__ == "__main__":
    main()
