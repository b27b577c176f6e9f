"""Content-keyed ONNX export cache and the opset range check of `export_onnx`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnx
import pytest
import torch

import crackloc.inference.export as export
from crackloc.config import ModelConfig
from crackloc.errors import CracklocError
from crackloc.inference.export import (
    OnnxPredictor,
    cache_dir,
    cached_onnx,
    export_onnx,
    max_opset,
    onnx_cache_key,
)
from crackloc.models import build_model
from crackloc.models.checkpoint import save_model

SIZE = 64  # small graphs keep the (real) exports to a few seconds each
MTIME = 1_700_000_000
SETTINGS = {"ahr_percentile": 50.0}


def _model_file(path: Path, *, seed: int) -> tuple[torch.nn.Module, Path]:
    """A randomly initialised resnet18_cam saved to `path` with a fixed mtime."""
    torch.manual_seed(seed)
    cfg = ModelConfig(name="resnet18_cam", pretrained="none")
    model = build_model(cfg).eval()
    save_model(path, model, cfg)
    os.utime(path, (MTIME, MTIME))
    return model, path


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Two different models saved as `model.pt` with the same mtime, exported through the cache.

    These are the module's only two real exports.
    """
    root = tmp_path_factory.mktemp("twins")
    (root / "a").mkdir()
    (root / "b").mkdir()
    model_a, file_a = _model_file(root / "a" / "model.pt", seed=0)
    model_b, file_b = _model_file(root / "b" / "model.pt", seed=1)
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRACKLOC_CACHE", str(cache))
        onnx_a = cached_onnx(model_a, file_a, image_size=SIZE, settings=SETTINGS)
        onnx_b = cached_onnx(model_b, file_b, image_size=SIZE, settings=SETTINGS)
    return {"cache": cache, "files": (file_a, file_b), "models": (model_a, model_b),
            "onnx": (onnx_a, onnx_b)}


def test_same_name_and_mtime_do_not_share_an_export(twins):
    file_a, file_b = twins["files"]
    onnx_a, onnx_b = twins["onnx"]
    assert file_a.name == file_b.name and file_a.stat().st_mtime == file_b.stat().st_mtime
    key_a = onnx_cache_key(file_a, image_size=SIZE, settings=SETTINGS)
    key_b = onnx_cache_key(file_b, image_size=SIZE, settings=SETTINGS)
    assert key_a != key_b
    assert onnx_a != onnx_b and onnx_a.parent == onnx_b.parent == twins["cache"]
    assert onnx_a.name == f"model-{key_a}.onnx" and onnx_b.name == f"model-{key_b}.onnx"
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    logits_a, _ = OnnxPredictor(onnx_a, threads=1)(x)
    logits_b, _ = OnnxPredictor(onnx_b, threads=1)(x)
    assert not torch.allclose(logits_a, logits_b, atol=1e-3)  # each export runs its own model
    with torch.no_grad():
        assert torch.allclose(logits_a, twins["models"][0](x)[0], atol=1e-4)


def test_export_stores_its_key(twins):
    file_a, _ = twins["files"]
    meta = {p.key: p.value for p in onnx.load(str(twins["onnx"][0])).metadata_props}
    assert meta["crackloc.cache_key"] == onnx_cache_key(file_a, image_size=SIZE, settings=SETTINGS)
    assert meta["crackloc.image_size"] == str(SIZE)


def test_same_everything_reuses_the_export(twins, monkeypatch):
    calls: list[Path] = []
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: calls.append(a[1]))
    monkeypatch.setenv("CRACKLOC_CACHE", str(twins["cache"]))
    onnx_a = twins["onnx"][0]
    before = onnx_a.stat().st_mtime_ns
    again = cached_onnx(twins["models"][0], twins["files"][0], image_size=SIZE, settings=dict(SETTINGS))
    assert again == onnx_a and onnx_a.stat().st_mtime_ns == before and calls == []


def test_key_follows_content_and_baked_in_settings(twins, tmp_path):
    file_a, _ = twins["files"]
    key = onnx_cache_key(file_a, image_size=SIZE, settings=SETTINGS)
    assert len(key) == 24 and int(key, 16) >= 0
    assert onnx_cache_key(file_a, image_size=112, settings=SETTINGS) != key
    assert onnx_cache_key(file_a, image_size=SIZE, settings={"ahr_percentile": 90.0}) != key
    assert onnx_cache_key(file_a, image_size=SIZE, settings={"ahr_percentile": None}) != key
    assert onnx_cache_key(file_a, image_size=SIZE, settings={"ahr_percentile": 50}) == key
    copy = shutil.copy(file_a, tmp_path / "renamed.pt")  # same bytes, other name and mtime
    assert onnx_cache_key(Path(copy), image_size=SIZE, settings=SETTINGS) == key
    with pytest.raises(CracklocError, match="cannot read"):
        onnx_cache_key(tmp_path / "missing.pt", image_size=SIZE, settings=SETTINGS)


def test_miss_exports_once_then_hits(tmp_path, monkeypatch):
    calls: list[dict] = []

    def fake_export(model, path, **kwargs):
        calls.append(kwargs)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"onnx")
        return Path(path)

    monkeypatch.setattr(export, "export_onnx", fake_export)
    ckpt = tmp_path / "my model (v2).pt"
    ckpt.write_bytes(b"weights")
    first = cached_onnx(torch.nn.Identity(), ckpt, image_size=SIZE, settings=SETTINGS,
                        cache=tmp_path / "c", metadata={"note": "x"})
    second = cached_onnx(torch.nn.Identity(), ckpt, image_size=SIZE, settings=SETTINGS,
                         cache=tmp_path / "c")
    other = cached_onnx(torch.nn.Identity(), ckpt, image_size=112, settings=SETTINGS,
                        cache=tmp_path / "c")
    assert first == second != other and len(calls) == 2
    assert first.parent == tmp_path / "c" and first.name.startswith("my_model_v2-")
    meta = calls[0]["metadata"]
    assert meta["note"] == "x" and meta["crackloc.cache_key"] in first.name
    assert calls[0]["image_size"] == SIZE and calls[1]["image_size"] == 112


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CRACKLOC_CACHE", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "crackloc"
    monkeypatch.setenv("CRACKLOC_CACHE", "")
    assert cache_dir() == tmp_path / "home" / ".cache" / "crackloc"
    monkeypatch.setenv("CRACKLOC_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert cache_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"


@pytest.mark.parametrize("opset", [999, "top+1"])
def test_unsupported_opset_fails_fast_in_one_line(opset, tmp_path, monkeypatch, capfd):
    opset = max_opset() + 1 if opset == "top+1" else opset

    def no_export(*args, **kwargs):
        raise AssertionError("the exporter must not run for an unsupported opset")

    monkeypatch.setattr(export, "to_onnx_proto", no_export)
    with pytest.raises(CracklocError, match=rf"opset {opset} is not supported .*18 to {max_opset()}\)"):
        export_onnx(torch.nn.Identity(), tmp_path / "m.onnx", image_size=SIZE, opset=opset)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not list(tmp_path.iterdir())


def test_max_opset_is_within_onnx():
    assert export.ONNX_OPSET <= max_opset() <= onnx.defs.onnx_opset_version()


def test_a_damaged_cache_entry_is_exported_again(twins, tmp_path):
    """#27: a truncated or corrupt `.onnx` in the cache was never rebuilt (every run failed on it)."""
    from crackloc.config import InferenceConfig
    from crackloc.inference.predictor import Predictor

    cfg = InferenceConfig(backend="onnx", tile=SIZE, precision="32")
    first = Predictor(twins["files"][0], cfg, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("*.onnx")
    good = entry.read_bytes()
    entry.write_bytes(good[: len(good) // 3])  # cut short, as by a full disk
    again = Predictor(twins["files"][0], cfg, cache_dir=tmp_path)
    assert entry.read_bytes() == good or len(entry.read_bytes()) > len(good) // 2
    x = torch.rand(1, 3, SIZE, SIZE)
    torch.testing.assert_close(again.model(x)[0], first.model(x)[0])
