"""ONNX export of a localization model, and an ONNX Runtime predictor with the torch contract.

The exported graph is the whole model, input normalisation and the AHR percentile threshold
included: `image` float32 [B,3,S,S] in [0,1] → `logits` [B], `heatmap` [B,1,S,S] in [0,1].
The batch axis is dynamic; the spatial size is fixed at export (`image_size`), as tiled
inference feeds fixed-size tiles.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export → onnxscript). The legacy
TorchScript exporter cannot export the model (MS-RFE's adaptive pooling has a traced output
size), while the dynamo exporter lowers `torch.quantile` to TopK + GatherElements, so the
percentile threshold is inside the graph.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crackloc.errors import CracklocError
from crackloc.io import atomic_write

ONNX_OPSET = 18
MIN_OPSET = 18  # onnxscript cannot down-convert the graph (Squeeze/Reduce* axes) below 18
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "heatmap")
VERIFY_TOLERANCE = 1e-3  # max |heatmap diff| and |logit diff| accepted by export's self-check


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _to_onnx_proto(net: nn.Module, example: torch.Tensor, opset: int) -> Any:
    """Trace `net` with a dynamic batch axis: → onnx.ModelProto (weights inline)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        net, (example,), None, dynamo=True, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
        dynamic_shapes=({0: batch},), opset_version=opset, verbose=False,
    )
    return program.model_proto


def _session(model_bytes_or_path: bytes | str, *, threads: int | None = None,
             providers: list[str] | None = None) -> Any:
    """An ONNX Runtime inference session (CPU unless `providers` says otherwise)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(model_bytes_or_path, opts, providers=providers or ["CPUExecutionProvider"])


def _verify(net: nn.Module, model_bytes: bytes, example: torch.Tensor) -> None:
    """Run the example through torch and ONNX Runtime; raise if the outputs disagree."""
    with torch.no_grad():
        logits, heatmap = net(example)  # [B], [B,1,S,S]
    onnx_logits, onnx_heatmap = _session(model_bytes).run(list(OUTPUT_NAMES), {INPUT_NAME: example.numpy()})
    d_logit = float(np.abs(onnx_logits - logits.numpy()).max())
    d_heat = float(np.abs(onnx_heatmap - heatmap.numpy()).max())
    if onnx_heatmap.shape != tuple(heatmap.shape) or max(d_logit, d_heat) > VERIFY_TOLERANCE:
        raise CracklocError(f"ONNX export check failed: |Δlogit| = {d_logit:.2e}, |Δheatmap| = {d_heat:.2e} "
                            f"(tolerance {VERIFY_TOLERANCE:g})")


def export_onnx(model: nn.Module, path: str | Path, *, image_size: int = 224, opset: int = ONNX_OPSET,
                verify: bool = True, metadata: dict[str, str] | None = None) -> Path:
    """Export a model that follows the `(logits, heatmap)` contract to an ONNX file.

    The model is copied to fp32 CPU eval mode first (the caller's model is not changed).

    Args:
        model: Localization model: x [B,3,S,S] in [0,1] → (logits [B], heatmap [B,1,S,S]).
        path: Destination `.onnx` file (written atomically).
        image_size: Fixed input side S of the exported graph.
        opset: ONNX opset version (≥ 18; ONNX Runtime ≥ 1.14 runs 18).
        verify: Check the file with `onnx.checker` (always done) and compare ONNX Runtime
            with torch on a random batch of 2 (raises `CracklocError` above 1e-3).
        metadata: Extra string key/values stored in the model (e.g. the model config).

    Returns:
        The path written.
    """
    import onnx

    if opset < MIN_OPSET:
        raise CracklocError(f"ONNX opset must be ≥ {MIN_OPSET} with the dynamo exporter, got {opset}")
    try:
        net = copy.deepcopy(model).float().cpu().eval()
        example = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        proto = _to_onnx_proto(net, example, opset)
    except CracklocError:
        raise
    except Exception as exc:  # the exporter raises many types; report one line, keep the chain
        raise CracklocError(f"ONNX export of {type(model).__name__} failed: {_first_line(exc)}") from exc
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise CracklocError(f"ONNX export produced opset {got}, not the requested {opset}")
    meta = {"crackloc.image_size": str(image_size), "crackloc.model": type(model).__name__, **(metadata or {})}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise CracklocError(f"exported ONNX model is invalid: {_first_line(exc)}") from exc
    data = proto.SerializeToString()
    if verify:
        _verify(net, data, example)
    return atomic_write(path, lambda f: f.write(data))


class OnnxPredictor:
    """An exported model run by ONNX Runtime, callable like the torch model.

    `predictor(x)` with x float [B,3,S,S] in [0,1] (numpy or torch) returns
    `(logits [B], heatmap [B,1,S,S])` as float32 torch tensors on x's device (CPU for numpy).

    Attributes:
        image_size: (S, S) the graph was exported for (None for a dynamic spatial size).
        metadata: String key/values stored at export.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise CracklocError(f"{path}: no such ONNX model file")
        try:
            self.session = _session(str(path), threads=threads, providers=providers)
        except Exception as exc:  # onnxruntime's InvalidProtobuf / Fail / InvalidGraph ...
            raise CracklocError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
        inputs = self.session.get_inputs()
        outputs = {o.name for o in self.session.get_outputs()}
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or not set(OUTPUT_NAMES) <= outputs:
            raise CracklocError(f"{path}: not a crackloc model (expects one input [B,3,H,W] and outputs "
                                f"{', '.join(OUTPUT_NAMES)}; found outputs {sorted(outputs)})")
        self.path = path
        self.input_name = inputs[0].name
        h, w = inputs[0].shape[2:]
        self.image_size = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def _check(self, arr: np.ndarray) -> None:
        if arr.ndim != 4 or arr.shape[1] != 3:
            raise CracklocError(f"ONNX model expects input [B,3,H,W], got {tuple(arr.shape)}")
        if self.image_size is not None and tuple(arr.shape[2:]) != self.image_size:
            s = self.image_size
            raise CracklocError(f"ONNX model {self.path.name} was exported for {s[0]}x{s[1]} input, "
                                f"got {arr.shape[2]}x{arr.shape[3]} (re-export with --image-size)")

    def __call__(self, x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """x float [B,3,S,S] in [0,1] → (logits [B], heatmap [B,1,S,S] in [0,1])."""
        device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        if isinstance(x, torch.Tensor):
            if not x.is_floating_point():
                raise CracklocError(f"ONNX model expects float RGB in [0,1], got {x.dtype}")
            arr = x.detach().to("cpu", torch.float32).numpy()
        else:
            arr = np.asarray(x)
            if not np.issubdtype(arr.dtype, np.floating):
                raise CracklocError(f"ONNX model expects float RGB in [0,1], got {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)  # [B,3,S,S]
        self._check(arr)
        logits, heatmap = self.session.run(list(OUTPUT_NAMES), {self.input_name: arr})
        return torch.from_numpy(logits).to(device), torch.from_numpy(heatmap).to(device)

    training = False  # always inference; `eval`/`train` are no-ops so torch-model code works

    def eval(self) -> OnnxPredictor:
        """No-op (an ONNX graph is always in inference mode)."""
        return self

    def train(self, mode: bool = True) -> OnnxPredictor:
        """No-op, for code that restores `model.train(was_training)`."""
        return self
