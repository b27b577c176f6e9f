"""Shared fixtures: synthetic crack folders and model files made in code (no files shipped, no network).

Nothing a test does is written outside pytest's temporary folders: the ONNX export cache is
pointed at one for the whole session ($CRACKLOC_CACHE).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))
warnings.filterwarnings("ignore", message=".*no cached ImageNet weights.*")


@pytest.fixture(scope="session", autouse=True)
def _cache_in_tmp(tmp_path_factory):
    """ONNX exports of the whole session go to a pytest temporary folder, never ~/.cache."""
    old = os.environ.get("CRACKLOC_CACHE")
    os.environ["CRACKLOC_CACHE"] = str(tmp_path_factory.mktemp("crackloc-cache"))
    yield
    if old is None:
        os.environ.pop("CRACKLOC_CACHE", None)
    else:
        os.environ["CRACKLOC_CACHE"] = old


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """A real (untrained) tiny-preset model file: predictions need not be good, only complete."""
    from crackloc.config import preset
    from crackloc.models import build_model
    from crackloc.models.checkpoint import save_model

    torch.manual_seed(0)
    cfg = preset("tiny", **{"model.pretrained": "none"}).model
    return save_model(tmp_path_factory.mktemp("model") / "model.pt", build_model(cfg), cfg)


@pytest.fixture(scope="session")
def crack_folder(tmp_path_factory):
    """A Positive/Negative folder of 60 synthetic 64 px images."""
    from crackloc.data.synthetic import write_crack_folder

    root = tmp_path_factory.mktemp("cracks") / "data"
    write_crack_folder(root, 60, size=64, seed=1)
    return root


@pytest.fixture(scope="session")
def tiny_run(crack_folder, tmp_path_factory):
    """A finished `crackloc train --preset tiny` run on the synthetic folder (shared by CLI tests)."""
    from crackloc.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    rc = main(["train", "--data", str(crack_folder), "--preset", "tiny", "--out", str(out),
               "--pretrained", "none", "--epochs", "2", "--teacher-epochs", "1"])
    assert rc == 0
    return out
