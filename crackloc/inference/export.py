"""ONNX export of a localization model, and an ONNX Runtime predictor with the torch contract.

The exported graph is the whole model, input normalisation and the AHR percentile threshold
included: `image` float32 [B,3,S,S] in [0,1] → `logits` [B], `heatmap` [B,1,S,S] in [0,1].
The batch axis is dynamic; the spatial size is fixed at export (`image_size`), as tiled
inference feeds fixed-size tiles.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export → onnxscript). The legacy
TorchScript exporter cannot export the model (MS-RFE's adaptive pooling has a traced output
size), while the dynamo exporter lowers `torch.quantile` to TopK + GatherElements, so the
percentile threshold is inside the graph.

Exports made on the fly for `--backend onnx` are cached by content (`cached_onnx`): the key
hashes the model file's bytes and every option baked into the graph, never its name or mtime.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crackloc.errors import CracklocError
from crackloc.io import atomic_write, file_digest

ONNX_OPSET = 18
MIN_OPSET = 18  # onnxscript cannot down-convert the graph (Squeeze/Reduce* axes) below 18
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "heatmap")
VERIFY_TOLERANCE = 1e-3  # max |heatmap diff| and |logit diff| accepted by export's self-check
CACHE_ENV = "CRACKLOC_CACHE"  # overrides the default ONNX export cache folder
CACHE_KEY_CHARS = 24  # hex characters of the sha256 kept in cached export names


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def max_opset() -> int:
    """Highest ONNX opset the installed exporter stack can produce.

    That is `onnx.defs.onnx_opset_version()`, lowered to the onnxscript version converter's
    own ceiling when onnxscript states one (it cannot convert the graph above it).
    """
    import onnx

    limit = int(onnx.defs.onnx_opset_version())
    try:
        from onnxscript.version_converter import _version_converter as converter
    except ImportError:  # pragma: no cover - onnxscript layout changed; onnx's limit still holds
        return limit
    return min(limit, int(getattr(converter, "SUPPORTED_MAX_ONNX_OPSET", limit)))


def _check_opset(opset: int) -> None:
    """Raise a one-line `CracklocError` for an opset the exporter cannot produce."""
    if opset < MIN_OPSET:
        raise CracklocError(f"ONNX opset must be ≥ {MIN_OPSET} with the dynamo exporter, got {opset}")
    top = max_opset()
    if opset > top:
        raise CracklocError(f"ONNX opset {opset} is not supported by the installed onnx/onnxscript "
                            f"(supported: {MIN_OPSET} to {top})")


def to_onnx_proto(net: nn.Module, example: torch.Tensor, opset: int) -> Any:
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
        opset: ONNX opset version (18 to `max_opset()`; ONNX Runtime ≥ 1.14 runs 18). Raises
            `CracklocError` before exporting when outside that range.
        verify: Check the file with `onnx.checker` (always done) and compare ONNX Runtime
            with torch on a random batch of 2 (raises `CracklocError` above 1e-3).
        metadata: Extra string key/values stored in the model (e.g. the model config).

    Returns:
        The path written.
    """
    import onnx

    _check_opset(opset)
    try:
        net = copy.deepcopy(model).float().cpu().eval()
        example = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        proto = to_onnx_proto(net, example, opset)
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


def cache_dir(explicit: str | Path | None = None) -> Path:
    """Folder of cached ONNX exports: `explicit`, else `$CRACKLOC_CACHE`, else `~/.cache/crackloc`."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "crackloc"


def _canonical(value: Any) -> Any:
    """Numbers as floats (50 and 50.0 are one setting); other values unchanged."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _exporter_versions() -> dict[str, str]:
    """Versions of the libraries that shape the exported graph."""
    import onnx

    versions = {"torch": torch.__version__, "onnx": onnx.__version__}
    try:
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    except ImportError:  # pragma: no cover - a dependency, but the key need not depend on it
        pass
    return versions


def onnx_cache_key(checkpoint: Path, *, image_size: int, settings: dict[str, Any]) -> str:
    """Key of one ONNX export: what the model file holds and every option baked into the graph.

    Args:
        checkpoint: The model file; its bytes are hashed (not its name or mtime).
        image_size: Fixed input side of the exported graph.
        settings: Other values baked into the graph, e.g. `{"ahr_percentile": 50.0}`.

    Returns:
        The first `CACHE_KEY_CHARS` hex characters of a sha256.
    """
    spec = {"model_sha256": file_digest(checkpoint, what="model file"), "image_size": int(image_size),
            "settings": {str(k): _canonical(v) for k, v in sorted(settings.items())},
            "opset": ONNX_OPSET, **_exporter_versions()}
    text = json.dumps(spec, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:CACHE_KEY_CHARS]


def _safe_stem(path: Path) -> str:
    """A file-name-safe, bounded version of the model file's stem."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem).strip("._")
    return stem[:64] or "model"


def cached_onnx(model: nn.Module, checkpoint: Path, *, image_size: int, settings: dict[str, Any],
                cache: str | Path | None = None, metadata: dict[str, str] | None = None) -> Path:
    """The ONNX export of `model` from the cache, exported (atomically) on first use.

    The file is `cache_dir(cache) / f"{stem}-{onnx_cache_key(...)}.onnx"`, so model files that
    share a name and mtime, or exports with another tile size or AHR percentile, never
    share an entry. The key is also stored in the ONNX metadata as `crackloc.cache_key`.

    Args:
        model: The model loaded from `checkpoint`, with `settings` already applied.
        checkpoint: The model file `model` was loaded from (hashed for the key).
        image_size: Fixed input side of the exported graph.
        settings: Other values baked into the graph, e.g. `{"ahr_percentile": 50.0}`.
        cache: Cache folder (default: `cache_dir()`).
        metadata: Extra string key/values stored in a new export.

    Returns:
        Path of the cached `.onnx` file.
    """
    checkpoint = Path(checkpoint)
    key = onnx_cache_key(checkpoint, image_size=image_size, settings=settings)
    path = cache_dir(cache) / f"{_safe_stem(checkpoint)}-{key}.onnx"
    if not path.is_file():
        meta = {**(metadata or {}), "crackloc.cache_key": key,
                "crackloc.settings": json.dumps(settings, sort_keys=True, default=repr)}
        export_onnx(model, path, image_size=image_size, metadata=meta)
    return path


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
