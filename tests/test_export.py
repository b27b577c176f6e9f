"""ONNX export: torch ↔ ONNX Runtime parity on synthetic cracks, dynamic batch, clear errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from crackloc.config import ModelConfig
from crackloc.data.synthetic import make_crack_set
from crackloc.errors import CracklocError
from crackloc.inference.export import OnnxPredictor, export_onnx
from crackloc.models import build_model

SIZE = 224


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The proposed model (random init, fixed seed) and its ONNX file at 224 px."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(pretrained="none")).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", image_size=SIZE,
                       metadata={"note": "test"})
    return model, path


@pytest.fixture(scope="module")
def fixtures():
    images, _, _ = make_crack_set(4, size=SIZE, seed=3)  # uint8 [4,3,S,S]
    return images.float() / 255.0


def test_export_writes_valid_model(exported):
    model, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == ["logits", "heatmap"]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, SIZE, SIZE]  # dynamic batch
    assert "TopK" in {n.op_type for n in proto.graph.node}  # AHR percentile threshold in the graph
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temp file


@pytest.mark.parametrize("batch", [slice(0, 1), slice(1, 4)], ids=["b1", "b3"])
def test_parity_with_torch(exported, fixtures, batch):
    model, path = exported
    x = fixtures[batch]  # [B,3,S,S]
    with torch.no_grad():
        logits, heatmap = model(x)
    onnx_logits, onnx_heatmap = OnnxPredictor(path, threads=1)(x)
    assert onnx_logits.shape == logits.shape and onnx_heatmap.shape == heatmap.shape == (len(x), 1, SIZE, SIZE)
    assert onnx_logits.dtype == onnx_heatmap.dtype == torch.float32
    assert (onnx_heatmap - heatmap).abs().max().item() < 1e-3
    assert torch.equal(onnx_logits > 0, logits > 0)
    assert torch.allclose(onnx_logits, logits, atol=1e-4, rtol=1e-4)
    assert (heatmap == 0).float().mean() > 0.3  # the threshold really zeroes the map
    assert onnx_heatmap.min() >= 0 and onnx_heatmap.max() <= 1


def test_predictor_accepts_numpy_and_reads_metadata(exported, fixtures):
    _, path = exported
    predictor = OnnxPredictor(path, threads=1)
    assert predictor.image_size == (SIZE, SIZE)
    assert predictor.metadata["note"] == "test" and predictor.metadata["crackloc.image_size"] == str(SIZE)
    assert predictor.eval() is predictor
    logits_np, heat_np = predictor(fixtures[:2].numpy().astype(np.float64))
    logits_t, heat_t = predictor(fixtures[:2])
    assert torch.equal(logits_np, logits_t) and torch.equal(heat_np, heat_t)


def test_predictor_rejects_bad_input(exported, fixtures):
    predictor = OnnxPredictor(exported[1], threads=1)
    with pytest.raises(CracklocError, match="exported for 224x224"):
        predictor(torch.rand(1, 3, 112, 112))
    with pytest.raises(CracklocError, match="float"):
        predictor((fixtures[:1] * 255).to(torch.uint8))
    with pytest.raises(CracklocError, match=r"\[B,3,H,W\]"):
        predictor(torch.rand(3, SIZE, SIZE))


def test_predictor_errors_on_missing_or_invalid_file(tmp_path):
    with pytest.raises(CracklocError, match="no such ONNX model file"):
        OnnxPredictor(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(CracklocError, match="not a readable ONNX model"):
        OnnxPredictor(junk)


def test_export_error_is_a_crackloc_error(tmp_path):
    class Unexportable(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return x.mean(dim=(1, 2, 3)), x[:, :1]
            return -x.mean(dim=(1, 2, 3)), x[:, :1]

    with pytest.raises(CracklocError, match="ONNX export of Unexportable failed"):
        export_onnx(Unexportable(), tmp_path / "bad.onnx", image_size=32)
    assert not (tmp_path / "bad.onnx").exists()
    with pytest.raises(CracklocError, match="opset"):
        export_onnx(Unexportable(), tmp_path / "bad.onnx", opset=17)


def test_predictor_drives_tiled_inference(exported):
    from crackloc.inference import tiling

    model, path = exported
    images, _, _ = make_crack_set(1, size=300, seed=5)  # uint8 [1,3,300,300] → 4 tiles of 224
    kwargs = dict(tile=SIZE, overlap=0.25, batch_size=4)
    ref = tiling.predict_tiled(model, images[0], **kwargs)
    got = tiling.predict_tiled(OnnxPredictor(path, threads=1), images[0], **kwargs)
    assert (got.heatmap - ref.heatmap).abs().max().item() < 1e-3
    assert torch.allclose(got.tile_probs, ref.tile_probs, atol=1e-5)
