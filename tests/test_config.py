from pathlib import Path

import pytest

from crackloc.config import RunConfig, apply_overrides, load_config, preset, save_config
from crackloc.errors import CracklocError


def test_presets_follow_the_paper_and_quick():
    paper = preset("paper")
    assert (paper.train.lr, paper.train.weight_decay, paper.train.batch_size) == (1e-4, 1e-5, 8)
    assert (paper.train.epochs, paper.train.patience, paper.train.lambda_l1) == (30, 5, 0.5)
    assert paper.train.pseudo_percentile == 95 and paper.model.ahr_percentile == 90
    assert preset("quick").data.max_train == 3000


def test_yaml_round_trip(tmp_path: Path):
    cfg = preset("quick", **{"model.backbone": "lite0", "train.seed": 3})
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("text, key", [
    ("train:\n  lrr: 0.1\n", "train.lrr"),
    ("train:\n  lr: fast\n", "train.lr"),
    ("train:\n  lr: 5.0\n", "train.lr"),
    ("model:\n  fusion: sum\n", "model.fusion"),
    ("bogus: 1\n", "bogus"),
    ("train:\n  epochs: true\n", "train.epochs"),
])
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(CracklocError, match=key.replace(".", r"\.")):
        load_config(tmp_path / "c.yaml")


def test_override_unknown_key():
    with pytest.raises(CracklocError, match="unknown key"):
        apply_overrides(RunConfig(), {"train.nope": 1})
