"""Dev and test never meet: the experiment scores only images outside the fixed settings-dev part."""

from __future__ import annotations

from pathlib import Path

import pytest

from crackloc.errors import CracklocError
from crackloc.evaluation.localize_run import fixed_partition, partition_stems
from crackloc.experiments import runner

STEMS = [f"{i:03d}" for i in range(1, 119)]  # CrackForest's 118 image names


def test_fixed_partition_is_evaluate_localizations_default_and_subsets_stay_inside():
    dev, test = fixed_partition(STEMS)
    assert (dev, test) == partition_stems(STEMS, dev_fraction=0.25, seed=0)
    assert len(dev) == 30 and len(test) == 88 and not set(dev) & set(test)
    small_dev, small_test = fixed_partition(STEMS, max_images=20)
    assert len(small_dev) == 5 and len(small_test) == 15
    assert set(small_dev) <= set(dev) and set(small_test) <= set(test)


def test_the_old_experiment_subset_scored_settings_dev_images():
    """Before: the first 20 of the seed-0 permutation were all among the 30 settings-dev images."""
    dev, _ = fixed_partition(STEMS)
    old_dev, old_test = partition_stems(STEMS, dev_fraction=0.25, seed=0, max_images=20)
    assert set(old_test) <= set(dev)  # what the old runner scored
    _, new_test = fixed_partition(STEMS, max_images=20)
    assert not set(new_test) & set(dev)


def test_runner_refuses_a_run_that_scored_a_settings_dev_image(tmp_path, monkeypatch):
    masks = tmp_path / "m"
    monkeypatch.setattr(runner, "MaskDataset", lambda root: type("DS", (), {"stems": STEMS})())
    monkeypatch.setattr(runner, "Predictor", lambda *a, **k: None)
    dev, _ = fixed_partition(STEMS)
    monkeypatch.setattr(runner, "evaluate_localization", lambda *a, **k: {"scored_test": [dev[0]]})
    spec = runner.ExperimentSpec(out=tmp_path, masks=str(masks), max_images=20)
    with pytest.raises(CracklocError, match="chose settings"):
        runner.localize(Path(tmp_path), spec, image_size=224, progress=False)
    seen = {}
    monkeypatch.setattr(runner, "evaluate_localization",
                        lambda *a, partition, **k: seen.update(p=partition) or {"scored_test": partition[1]})
    runner.localize(Path(tmp_path), spec, image_size=224, progress=False)
    assert not set(seen["p"][1]) & set(dev) and set(seen["p"][0]) <= set(dev)
