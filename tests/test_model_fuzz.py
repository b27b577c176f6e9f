"""Model-file fuzz: random and crafted payloads give a one-line refusal, never a traceback or a NaN.

Every case goes through `crackloc predict --checkpoint FILE` (the way users meet it) and must exit
2 with exactly one stderr line naming the file, and nothing written as a prediction.
"""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crackloc.cli import main
from crackloc.errors import CracklocError
from crackloc.inference.predictor import Predictor
from crackloc.models.checkpoint import FORMAT, read_model_file


@pytest.fixture(scope="module")
def payload(model_file) -> dict:
    return torch.load(model_file, weights_only=True)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "wall.png"
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(path)
    return path


def _crafted(payload: dict) -> dict[str, object]:
    """name → a payload (dict, saved with torch.save) or raw bytes."""
    def with_meta(**meta):
        return {**payload, "meta": {**payload.get("meta", {}), **meta}}

    sd = payload["state_dict"]
    first_float = next(k for k, v in sd.items() if v.is_floating_point())
    nan_sd = {**sd, first_float: torch.full_like(sd[first_float], float("nan"))}
    inf_sd = {**sd, first_float: torch.full_like(sd[first_float], float("inf"))}
    cfg = payload["config"]
    return {
        "threshold-string": with_meta(val_threshold="0.5"),
        "threshold-list": with_meta(val_threshold=[0.5]),
        "threshold-nan": with_meta(val_threshold=float("nan")),
        "threshold-above-1": with_meta(val_threshold=2.0),
        "threshold-bool": with_meta(val_threshold=True),
        "nan-weights": {**payload, "state_dict": nan_sd},
        "inf-weights": {**payload, "state_dict": inf_sd},
        "missing-config": {k: v for k, v in payload.items() if k != "config"},
        "missing-state-dict": {k: v for k, v in payload.items() if k != "state_dict"},
        "missing-format": {k: v for k, v in payload.items() if k != "format"},
        "wrong-format": {**payload, "format": "crackloc-model-v999"},
        "config-wrong-type": {**payload, "config": {**cfg, "backbone": 5}},
        "config-unknown-model": {**payload, "config": {**cfg, "name": "no_such_model"}},
        "config-unknown-key": {**payload, "config": {**cfg, "evil": 1}},
        "config-not-a-dict": {**payload, "config": [1, 2]},
        "meta-not-a-dict": {**payload, "meta": "x"},
        "state-dict-not-tensors": {**payload, "state_dict": {"a": 1}},
        "state-dict-missing-key": {**payload, "state_dict": dict(list(sd.items())[1:])},
        "state-dict-wrong-shape": {**payload, "state_dict": {**sd, first_float: torch.zeros(3)}},
        "a-list": [1, 2, 3],
        "a-tensor": torch.zeros(3),
        "lightning": {"pytorch-lightning_version": "2.0", "state_dict": sd},
        "text": b"model weights: see attached\n",
        "empty": b"",
        "random-bytes": bytes(random.Random(0).getrandbits(8) for _ in range(4096)),
        "truncated-zip": None,  # filled from the real file below
        "zip-of-nothing": None,
        "format-string": {"format": FORMAT, "config": cfg, "state_dict": "x", "meta": {}},
    }


def _onnx_bytes() -> bytes:
    import onnx.helper as h

    graph = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g",
                         [h.make_tensor_value_info("x", 1, [1])], [h.make_tensor_value_info("y", 1, [1])])
    return h.make_model(graph).SerializeToString()


def _write_cases(payload: dict, model_file: Path, folder: Path) -> list[Path]:
    folder.mkdir()
    real = model_file.read_bytes()
    zip_nothing = io.BytesIO()
    with zipfile.ZipFile(zip_nothing, "w") as z:
        z.writestr("nothing.txt", "x")
    raw = {"truncated-zip": real[: len(real) // 2], "zip-of-nothing": zip_nothing.getvalue(),
           "onnx-file.onnx": _onnx_bytes(), "onnx-named-pt": _onnx_bytes()}
    paths = []
    for name, obj in {**_crafted(payload), **raw}.items():
        path = folder / (name if name.endswith(".onnx") else f"{name}.pt")
        if isinstance(obj, bytes):
            path.write_bytes(obj)
        elif obj is not None:
            torch.save(obj, path)
        else:
            continue
        paths.append(path)
    return paths


def test_every_crafted_model_file_is_a_one_line_refusal(payload, model_file, image, tmp_path, capsys):
    cases = _write_cases(payload, model_file, tmp_path / "cases")
    assert len(cases) >= 30
    for case in cases:
        out = tmp_path / "out" / case.stem
        rc = main(["predict", str(image), "--checkpoint", str(case), "--out", str(out), "--tile", "64"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2, (case.name, rc, err)
        assert len(lines) == 1 and "Traceback" not in err and str(case) in lines[0], (case.name, err)
        assert not (out / "predictions.jsonl").is_file() or not (out / "predictions.jsonl").read_text().strip()
        with pytest.raises(CracklocError):
            Predictor(case)


def test_messages_say_what_the_file_is(payload, model_file, tmp_path):
    cases = {p.stem: p for p in _write_cases(payload, model_file, tmp_path / "cases")}
    expect = {"onnx-file": "an ONNX model", "onnx-named-pt": "an ONNX model", "text": "a text file",
              "empty": "empty file", "nan-weights": "NaN or infinite", "threshold-string": "val_threshold",
              "lightning": "Lightning training checkpoint", "random-bytes": "not a crackloc model file"}
    for stem, words in expect.items():
        with pytest.raises(CracklocError) as exc:
            read_model_file(cases[stem])
        assert words in str(exc.value), (stem, str(exc.value))
        assert "could run code" not in str(exc.value), stem
