"""`--precision auto`: bf16 only where the hardware runs it natively, recorded wherever settings are.

The capability check is monkeypatched both ways, so these tests give the same verdict on CPUs
with and without native bf16.
"""

from __future__ import annotations

import json

import pytest
import torch

from crackloc import tensors
from crackloc.cli import main
from crackloc.config import InferenceConfig, TrainConfig
from crackloc.inference.predictor import Predictor
from crackloc.training.fit import train_precision


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-native-bf16"])
def native(request, monkeypatch) -> bool:
    monkeypatch.setattr(tensors, "mkldnn_bf16", lambda: request.param)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    return request.param


def test_auto_picks_bf16_only_with_native_support(native):
    assert tensors.native_bf16("cpu") is native
    assert tensors.resolve_precision("auto", "cpu") == ("bf16" if native else "32")
    assert tensors.resolve_precision("32", "cpu") == "32"
    assert train_precision(TrainConfig(accelerator="cpu")) == ("bf16" if native else "32")


def test_explicit_bf16_is_kept_and_warns_once_without_native_support(native, capsys):
    tensors.warn_once.cache_clear()
    assert tensors.resolve_precision("bf16", "cpu") == "bf16"
    assert tensors.resolve_precision("bf16", "cpu") == "bf16"
    err = capsys.readouterr().err.splitlines()
    assert err == ([] if native else [err[0]])
    if not native:
        assert "bf16" in err[0] and "slower" in err[0] and "--precision auto" in err[0]


def test_an_isa_cap_below_bf16_counts_as_no_native_bf16(monkeypatch):
    monkeypatch.setattr(tensors, "mkldnn_bf16", lambda: True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert not tensors.native_bf16("cpu") and tensors.resolve_precision("auto") == "32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert tensors.native_bf16("cpu")


def test_autocast_follows_the_resolved_precision(native):
    with tensors.autocast_for("cpu", "auto"):
        assert torch.is_autocast_enabled("cpu") is native
    with tensors.autocast_for("cpu", "32"):
        assert not torch.is_autocast_enabled("cpu")


def test_predictor_runs_and_reports_the_resolved_precision(native, model_file):
    pred = Predictor(model_file, InferenceConfig(tile=64))
    assert InferenceConfig().precision == "auto"
    assert pred.cfg.precision == ("bf16" if native else "32")
    onnx_cfg = Predictor(model_file, InferenceConfig(tile=64, precision="bf16", backend="onnx")).cfg
    assert onnx_cfg.precision == "32"  # ONNX Runtime runs the fp32 export as it is


def test_predictions_jsonl_records_the_precision_that_ran(native, model_file, tmp_path):
    from crackloc.io import save_png

    save_png(tmp_path / "a.png", (torch.rand(80, 90, 3) * 255).byte().numpy())
    assert main(["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--checkpoint", str(model_file),
                 "--tile", "64"]) == 0
    rec = json.loads((tmp_path / "o" / "predictions.jsonl").read_text())
    assert rec["precision"] == ("bf16" if native else "32") and rec["line_guide"] == 0.9


def test_compile_keeps_torchs_compiler_to_errors():
    """#27 minor: `--compile` printed pages of graph-break advice (the gated decoder's branch is by design)."""
    import logging

    from crackloc.inference.predictor import Predictor

    torch_logger = logging.getLogger("torch._dynamo")
    before = torch_logger.level
    try:
        Predictor.from_model(torch.nn.Identity(), InferenceConfig(compile=True))  # compiles lazily: no cost here
        assert all(logging.getLogger(n).getEffectiveLevel() == logging.ERROR
                   for n in ("torch._dynamo", "torch._inductor", "torch.utils.cpp_extension"))
    finally:
        torch_logger.setLevel(before)
