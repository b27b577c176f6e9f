"""Shared fixtures: synthetic crack folders made in code (no files shipped, no network)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))
warnings.filterwarnings("ignore", message=".*no cached ImageNet weights.*")


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
