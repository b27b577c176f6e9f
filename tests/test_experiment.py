"""Experiment runner (resumable, shared teacher), aggregation against hand-computed values, report."""

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from crackloc.errors import CracklocError
from crackloc.experiments.aggregate import mean_std, paired_tests, paired_ttest, summarize
from crackloc.experiments.methods import ALL_METHODS, method_dir, method_from_dir, parse_methods
from crackloc.experiments.runner import (
    ExperimentSpec,
    method_config,
    parse_seeds,
    run_dir,
    run_experiment,
)


def test_paired_ttest_by_hand():
    # Differences 0.02, 0.03, 0.04: mean 0.03, sample sd 0.01, t = 0.03 / (0.01 / √3) = 3√3 ≈ 5.19615.
    # With 2 degrees of freedom the two-sided p is 1 − t / √(t² + 2) = 1 − 5.19615 / √29 ≈ 0.035099.
    res = paired_ttest([0.90, 0.92, 0.94], [0.88, 0.89, 0.90])
    assert res["t"] == pytest.approx(3 * math.sqrt(3), rel=1e-6)
    assert res["p"] == pytest.approx(1 - 3 * math.sqrt(3) / math.sqrt(29), rel=1e-6)
    assert res["n"] == 3 and res["mean_diff"] == pytest.approx(0.03)
    assert paired_ttest([0.9], [0.8])["p"] is None  # one seed: undefined
    assert paired_ttest([0.9, 0.9], [0.8, 0.8])["p"] is None  # constant differences: no finite t


def test_mean_std_is_the_sample_std():
    # mean of 1, 2, 4 = 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9; / (3 − 1) → std √(7/3)
    s = mean_std([1.0, 2.0, 4.0, None, float("nan")])
    assert s["mean"] == pytest.approx(7 / 3) and s["std"] == pytest.approx(math.sqrt(7 / 3)) and s["n"] == 3
    assert mean_std([0.5]) == {"mean": 0.5, "std": None, "n": 1}


def test_tests_pair_only_the_seeds_both_methods_have():
    rows = [{"method": "crackloc", "seed": s, "auroc": a} for s, a in ((0, 0.90), (1, 0.92), (2, 0.94))]
    rows += [{"method": "psol", "seed": s, "auroc": a} for s, a in ((0, 0.88), (1, 0.89), (2, 0.90), (3, 0.5))]
    rows += [{"method": "ts_cam", "seed": 0, "auroc": 0.8}]
    tests = paired_tests(rows, metrics=("auroc",))
    assert tests["psol"]["auroc"]["seeds"] == [0, 1, 2]  # seed 3 has no proposed run
    assert tests["psol"]["auroc"]["p"] == pytest.approx(0.035099, abs=1e-6)
    assert tests["ts_cam"]["auroc"]["n"] == 1 and tests["ts_cam"]["auroc"]["p"] is None
    assert summarize(rows, metrics=("auroc",))["psol"]["auroc"]["n"] == 4


def test_methods_seeds_and_configs():
    assert parse_methods("all") == list(ALL_METHODS) and len(ALL_METHODS) == 11
    assert parse_methods("psol, ablation:ahr,psol") == ["psol", "ablation:ahr"]
    with pytest.raises(CracklocError, match="unknown method"):
        parse_methods("resnet50")
    assert parse_seeds("0,2") == [0, 2]
    with pytest.raises(CracklocError):
        parse_seeds("a")
    assert method_from_dir(method_dir("ablation:full_concat")) == "ablation:full_concat"
    spec = ExperimentSpec(out=Path("exp"), preset="quick", overrides={"train.epochs": 1})
    cfg = method_config(spec, "ablation:single_scale", 2, Path("split.csv"))
    assert (cfg.model.name, cfg.model.fusion, cfg.model.ahr, cfg.model.scales) == ("crackloc", "none", False, ["layer4"])
    assert (cfg.train.seed, cfg.train.epochs, cfg.train.teacher_epochs, cfg.data.max_train) == (2, 1, 2, 2000)
    assert method_config(spec, "ts_cam", 0, Path("split.csv")).model.name == "ts_cam"


TINY = {"train.epochs": 1, "train.teacher_epochs": 1, "data.image_size": 64, "model.pretrained": "none",
        "teacher.pretrained": "none", "train.batch_size": 8}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A finished 2 methods × 2 seeds tiny experiment on 40 synthetic 64 px images."""
    from crackloc.data.synthetic import write_crack_folder

    root = tmp_path_factory.mktemp("exp")
    write_crack_folder(root / "data", 40, size=64, seed=3)
    spec = ExperimentSpec(out=root / "EXP", preset="tiny", methods=["crackloc", "psol"], seeds=[0, 1],
                          data=str(root / "data"), overrides=TINY)
    run_experiment(spec, progress=False, log=lambda s: None)
    yield spec
    shutil.rmtree(root, ignore_errors=True)  # 1.3 GB of checkpoints: gone when the module is done


def test_runner_shares_the_split_and_teacher_and_resumes(experiment):
    spec, out = experiment, experiment.out
    runs = {(m, s): run_dir(out, m, s) for m in spec.methods for s in spec.seeds}
    assert all((r / "metrics.json").is_file() for r in runs.values())
    manifests = {json.loads((r / "train_summary.json").read_text())["n_train"] for r in runs.values()}
    assert len(manifests) == 1  # same split (and per-seed subset) for every method
    teacher = out / "teachers" / "seed0" / "teacher.pt"
    assert os.path.samefile(teacher, runs[("psol", 0)] / "teacher.pt")
    assert os.path.samefile(teacher, runs[("crackloc", 0)] / "teacher.pt")
    assert sorted(p.name for p in (out / "teachers" / "seed0").glob("pseudo_*.pt")) == [
        "pseudo_cam_64x64.pt", "pseudo_ddt_64x64.pt"]  # made at the patch size, pooled per step
    mtimes = {k: (r / "metrics.json").stat().st_mtime_ns for k, r in runs.items()}
    teacher_mtime = teacher.stat().st_mtime_ns
    # Simulate kills: one run lost its metrics; another died mid-training (config + checkpoints, no model).
    (runs[("crackloc", 1)] / "metrics.json").unlink()
    for name in ("metrics.json", "model.pt", "train_summary.json"):
        (runs[("psol", 1)] / name).unlink()
    summary = run_experiment(spec, progress=False, log=lambda s: None)
    untouched = [("crackloc", 0), ("psol", 0)]
    assert all((runs[k] / "metrics.json").stat().st_mtime_ns == mtimes[k] for k in untouched)
    assert (runs[("psol", 1)] / "model.pt").is_file() and (runs[("crackloc", 1)] / "metrics.json").is_file()
    assert teacher.stat().st_mtime_ns == teacher_mtime  # the shared teacher was not retrained
    assert summary["n_runs"] == 4 and summary["ttests_vs_proposed"]["psol"]["auroc"]["seeds"] == [0, 1]
    with pytest.raises(CracklocError, match="use a new --out"):
        run_experiment(ExperimentSpec(out=out, preset="quick", methods=["psol"], seeds=[0]), progress=False)


def test_report_writes_tables_and_figures(experiment):
    from crackloc.cli import main

    assert main(["report", str(experiment.out), "--images", "2"]) == 0
    report = experiment.out / "report"
    text = (report / "report.md").read_text()
    assert "Table I" in text and "0.9882 ± 0.0015" in text and "circular" in text
    for name in ("table1.csv", "table2.csv", "iou.csv", "curves.png", "curves_all.png", "qualitative.png"):
        assert (report / name).stat().st_size > 0, name
    results = (experiment.out / "results.csv").read_text().splitlines()
    assert len(results) == 5 and results[0].startswith("method,seed,auroc")


def test_cli_experiment_refuses_bad_arguments(tmp_path, capsys):
    from crackloc.cli import main

    assert main(["experiment", "--out", str(tmp_path / "e")]) == 2
    assert main(["experiment", "--data", str(tmp_path), "--out", str(tmp_path / "e"), "--methods", "foo"]) == 2
    assert "unknown method" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["experiment", "--data", str(tmp_path), "--out", str(tmp_path / "e"), "--loc-scale", "0"])
    assert exc.value.code == 2 and "--loc-scale=0.0 is outside [0.01, 64]" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_masks_given_later_score_the_finished_runs(experiment, tmp_path):
    """--masks on a rerun scores every finished run against the masks without retraining it."""
    import dataclasses

    import numpy as np
    from PIL import Image

    from crackloc.data.synthetic import make_crack_image
    from crackloc.experiments.report import build_report

    masks = tmp_path / "masks_set"
    (masks / "images").mkdir(parents=True)
    (masks / "masks").mkdir()
    for i in range(4):
        img, mask = make_crack_image(64, 96, crack=True, seed=10 + i)
        Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(masks / "images" / f"{i}.png")
        Image.fromarray(mask[0].numpy().astype(np.uint8) * 255).save(masks / "masks" / f"{i}.png")
    runs = [run_dir(experiment.out, m, s) for m in experiment.methods for s in experiment.seeds]
    models = {r: (r / "model.pt").stat().st_mtime_ns for r in runs}
    spec = dataclasses.replace(experiment, masks=str(masks), max_images=4, loc_scale=1.0, loc_gate=False)
    summary = run_experiment(spec, progress=False, log=lambda s: None)
    for r in runs:
        loc = json.loads((r / "localization" / "metrics.json").read_text())
        assert loc["n_images"] == 4 and 0.0 <= loc["pxap"] <= 1.0 and loc["scale"] == 1.0
        assert (r / "model.pt").stat().st_mtime_ns == models[r]  # scored, not retrained
    assert summary["methods"]["crackloc"]["pxap"]["n"] == 2
    from crackloc.config import DEFAULT_AHR_PERCENTILE
    from crackloc.experiments.runner import localization_config
    from crackloc.inference.predictor import Predictor

    # scored as `crackloc predict` runs the model: AHR cut at the inference percentile, not the trained 90
    cfg = localization_config(spec, image_size=64)
    pred = Predictor(run_dir(experiment.out, "crackloc", 0) / "model.pt", cfg)
    assert pred.model.ahr.percentile == DEFAULT_AHR_PERCENTILE != 90
    saved = json.loads((experiment.out / "experiment.json").read_text())
    assert saved["masks"] == str(masks) and saved["loc_scale"] == 1.0 and saved["loc_gate"] is False
    assert saved["loc_line_guide"] == spec.loc_line_guide == cfg.line_guide
    text = build_report(experiment.out, n_images=2).read_text()
    assert "Localisation against human masks" in text and "scale 1.0, gate off" in text
    for name in ("human_masks.csv", "qualitative_masks.png"):
        assert (experiment.out / "report" / name).stat().st_size > 0, name


def test_stage2_and_floor_rows(tmp_path):
    """Stage 2 trains from its seed's proposed run, a floor trains nothing, each is tiled at its own scale."""
    import numpy as np
    from PIL import Image

    from crackloc.data.synthetic import make_crack_image, write_crack_folder
    from crackloc.experiments.report import build_report

    assert parse_methods("crackseg,ridge") == ["crackloc", "crackseg", "ridge"]  # its stage 1 goes first
    assert parse_methods("crackseg,crackloc") == ["crackloc", "crackseg"]
    assert len(parse_methods("all+")) == 16
    write_crack_folder(tmp_path / "data", 40, size=64, seed=3)
    masks = tmp_path / "masks_set"
    for sub in ("images", "masks"):
        (masks / sub).mkdir(parents=True)
    for i in range(4):
        img, mask = make_crack_image(64, 96, crack=True, seed=20 + i)
        Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(masks / "images" / f"{i}.png")
        Image.fromarray(mask[0].numpy().astype(np.uint8) * 255).save(masks / "masks" / f"{i}.png")
    spec = ExperimentSpec(out=tmp_path / "EXP", preset="tiny", methods=["crackseg"], seeds=[0],
                          data=str(tmp_path / "data"), overrides=TINY, masks=str(masks), max_images=4,
                          loc_scale=2.0)
    with pytest.raises(CracklocError, match="run crackloc first"):
        run_experiment(spec, progress=False, log=lambda s: None)
    spec.methods = parse_methods("crackseg,blackhat")
    summary = run_experiment(spec, progress=False, log=lambda s: None)
    stage1, stage2, floor = (run_dir(spec.out, m, 0) for m in spec.methods)
    cfg = method_config(spec, "crackseg", 0, Path("split.csv"))
    assert cfg.model.init_from == str(stage1 / "model.pt") and cfg.train.select_by == "last"
    assert not (floor / "teacher.pt").exists() and not (floor / "checkpoints").exists()
    scales = {r: json.loads((r / "localization" / "metrics.json").read_text()) for r in (stage1, stage2, floor)}
    assert [(scales[r]["scale"], scales[r]["gate"]) for r in (stage1, stage2, floor)] == [
        (2.0, True), (1.0, True), (1.0, False)]
    # learned maps get predict's line guide, a floor is scored as its filter is
    assert [scales[r]["inference"]["line_guide"] for r in (stage1, stage2, floor)] == [
        spec.loc_line_guide, spec.loc_line_guide, 0.0] and spec.loc_line_guide > 0
    assert set(summary["methods"]) == {"crackloc", "crackseg", "blackhat"}
    text = build_report(spec.out, figures=False).read_text()
    assert f"stage 2 at scale 1.0, gate on, line guide {spec.loc_line_guide}; the floors at scale 1.0, gate off)" in text
    assert "| crackseg |" in text and "| blackhat |" in text
