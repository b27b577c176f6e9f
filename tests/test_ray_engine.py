"""`crackloc predict --engine ray`: the local engine's outputs from a Ray Data actor pool.

One local Ray (2 CPUs) serves the whole module. The first run has a worker that dies on one
image (Ray restarts it and retries that image); its outputs must still equal the local
engine's, record for record and PNG for PNG, with the bad file reported in failed.jsonl and
summary.parquet. The resume test removes some outputs and checks that a rerun with --resume
redoes only those.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from crackloc.cli import main
from crackloc.inference.outputs import read_records
from crackloc.io import save_png

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pq = pytest.importorskip("pyarrow.parquet")

from crackloc.inference import ray_engine  # noqa: E402

N_IMAGES = 8
KEYS = ("crack_probability", "crack", "width", "height", "n_tiles", "scale", "heatmap", "geometry",
        "heatmap_png", "overlay_png", "color_png", "decision_threshold")


class DyingWorker(ray_engine.PhotoWorker):
    """A worker whose process dies the first time it is given img3.png (a marker file says so)."""

    marker: str = ""

    def __call__(self, batch):
        if any(str(p).endswith("img3.png") for p in batch["path"]) and not os.path.exists(self.marker):
            Path(self.marker).write_text("died once")
            os._exit(1)  # like a killed or crashed worker process: nothing is cleaned up
        return super().__call__(batch)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """8 synthetic 96×128 PNG photos and one file that is not an image."""
    from crackloc.data.synthetic import make_crack_image

    root = tmp_path_factory.mktemp("ray-photos") / "photos"
    for i in range(N_IMAGES):
        img, _ = make_crack_image(96, 128, crack=i % 2 == 0, seed=i)
        save_png(root / f"img{i}.png", (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    (root / "bad.jpg").write_text("not an image")
    return root


def _argv(photos: Path, out: Path, model_file: Path, *extra: str) -> list[str]:
    return ["predict", str(photos), "--out", str(out), "--checkpoint", str(model_file), "--tile", "64",
            "--geometry", *extra]


@pytest.fixture(scope="module")
def ray_out(local_ray, photos, model_file, tmp_path_factory) -> Path:
    """One `--engine ray --workers 2` run, during which one worker dies once."""
    out = tmp_path_factory.mktemp("ray-out") / "out"
    DyingWorker.marker = str(out.parent / "died")
    saved = ray_engine.PhotoWorker
    ray_engine.PhotoWorker = DyingWorker
    try:
        rc = main(_argv(photos, out, model_file, "--engine", "ray", "--workers", "2"))
    finally:
        ray_engine.PhotoWorker = saved
    assert rc == 1  # the bad file
    assert Path(DyingWorker.marker).is_file(), "the worker was never killed"
    return out


def _by_path(out: Path) -> dict[str, dict]:
    records = read_records(out / "predictions.jsonl")
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)), "duplicate records"
    return {r["path"]: r for r in records}


def test_ray_equals_local_and_reports_the_bad_file(ray_out, photos, model_file, tmp_path):
    local = tmp_path / "local"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the 2 workers on 2 CPUs: fp32 sums can round differently on 2 threads
    try:
        assert main(_argv(photos, local, model_file)) == 1
    finally:
        torch.set_num_threads(threads)
    want, got = _by_path(local), _by_path(ray_out)
    assert set(got) == set(want) == {str(photos / f"img{i}.png") for i in range(N_IMAGES)}
    for path, rec in want.items():
        for key in KEYS:
            if key == "crack_probability":
                assert got[path][key] == pytest.approx(rec[key], abs=1e-4), path
            else:
                assert got[path][key] == rec[key], (path, key)
        for key in ("heatmap_png", "overlay_png", "color_png"):  # same PNGs, complete
            assert (ray_out / rec[key]).read_bytes() == (local / rec[key]).read_bytes(), rec[key]
    assert read_records(ray_out / "failed.jsonl") == read_records(local / "failed.jsonl") == [
        {"path": str(photos / "bad.jpg"), "reason": "not a readable image (expected JPEG, PNG, BMP or TIFF)"}]
    summary = pq.read_table(ray_out / "summary.parquet").to_pylist()
    assert [r["path"] for r in summary] == sorted([*want, str(photos / "bad.jpg")])
    for row in summary:
        if row["path"].endswith("bad.jpg"):
            assert row["error"].startswith("not a readable image") and row["crack_probability"] is None
            continue
        rec = want[row["path"]]
        assert row["error"] is None and row["crack"] == rec["crack"]
        assert row["crack_probability"] == pytest.approx(rec["crack_probability"], abs=1e-4)
        geo = rec["geometry"]
        assert (row["n_cracks"], row["total_length_px"], row["max_width_px"]) == \
            (geo["count"], geo["total_length_px"], geo["max_width_px"])
    left = {p.name for p in ray_out.iterdir()} - {"predictions.jsonl", "failed.jsonl", "summary.parquet",
                                                   ".crackloc.lock"}
    assert left == {rec[k] for rec in want.values() for k in ("heatmap_png", "overlay_png", "color_png")}


def test_the_three_engines_write_byte_identical_files(ray_out, photos, model_file, tmp_path):
    """One output writer: `predict` (local), `--engine ray` and the viewer's folder job give the same
    records and byte-identical PNGs for the same photos, model and settings."""
    from crackloc.config import InferenceConfig
    from crackloc.viewer.folders import FolderJob
    from crackloc.viewer.mapper import PhotoMapper

    local, viewer = tmp_path / "local", tmp_path / "viewer"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the 2 Ray workers on 2 CPUs (fp32 sums round by thread count)
    try:
        assert main(_argv(photos, local, model_file)) == 1  # bad.jpg
        job = FolderJob(PhotoMapper(model_file, InferenceConfig(tile=64)), photos, viewer, root=photos).start()
        assert job.wait(timeout=300) and job.error is None
    finally:
        torch.set_num_threads(threads)
    by_engine = {out: _by_path(out) for out in (local, ray_out, viewer)}
    want = by_engine[local]
    assert len(want) == N_IMAGES
    for out, got in by_engine.items():
        assert set(got) == set(want), out
        for path, rec in want.items():
            assert list(got[path]) == list(rec), (out, path)  # the same keys in the same order
            assert {k: v for k, v in got[path].items() if k != "crack_probability"} == \
                {k: v for k, v in rec.items() if k != "crack_probability"}, (out, path)
            assert got[path]["crack_probability"] == pytest.approx(rec["crack_probability"], abs=1e-4)
            for key in ("heatmap_png", "overlay_png", "color_png"):
                assert (out / rec[key]).read_bytes() == (local / rec[key]).read_bytes(), (out, rec[key])


def test_resume_redoes_only_the_images_without_complete_outputs(ray_out, photos, model_file, tmp_path,
                                                                capsys):
    out = tmp_path / "out"
    shutil.copytree(ray_out, out)
    before = _by_path(out)
    lost = [str(photos / f"img{i}.png") for i in (1, 4, 6)]
    for path in lost:  # as if the run had stopped before these were finished
        (out / before[path]["overlay_png"]).unlink()
    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"path": "torn')  # a crash mid-line
    untouched = {r[k] for path, r in before.items() if path not in lost
                 for k in ("heatmap_png", "overlay_png", "color_png")}
    kept = {name: (out / name).stat().st_mtime_ns for name in untouched}
    os.utime(out / "summary.parquet", ns=(0, 0))
    assert main(_argv(photos, out, model_file, "--engine", "ray", "--workers", "1", "--resume")) == 1
    err = capsys.readouterr().err
    assert "resuming: 5 of 9 image(s) already done" in err and "1 input(s) failed" in err
    records = read_records(out / "predictions.jsonl")
    assert len(records) == N_IMAGES
    assert sorted(r["path"] for r in records[-3:]) == lost  # only these were predicted again
    assert {name: (out / name).stat().st_mtime_ns for name in untouched} == kept  # not written again
    assert {r["path"]: r for r in records} == before  # same results as the first time
    assert out.joinpath("summary.parquet").stat().st_mtime_ns > 0
    assert len(pq.read_table(out / "summary.parquet")) == N_IMAGES + 1


def test_options_and_inputs_are_checked(photos, model_file, tmp_path, capsys):
    """Refusals before any work: no inputs, URIs or Ray options without --engine ray (no Ray needed)."""
    cases = [
        (["predict", "--out", str(tmp_path / "a")], "no inputs"),
        (["predict", "s3://bucket/photos", "--out", str(tmp_path / "b")], "--engine ray"),
        (["predict", str(photos), "--out", str(tmp_path / "c"), "--workers", "2"], "--workers is an option"),
    ]
    for argv, said in cases:
        assert main(argv) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and said in err[0], err
    with pytest.raises(SystemExit):
        main(["predict", str(photos), "--out", str(tmp_path / "d"), "--engine", "ray", "--workers", "0"])
    assert "--workers=0 is outside [1, " in capsys.readouterr().err


def test_input_lists_and_listing(photos, tmp_path):
    from crackloc.inference.batch import read_input_list

    txt = tmp_path / "list.txt"
    txt.write_text(f"# photos\n{photos / 'img0.png'}\n\n  {photos / 'img1.png'}  \ns3://bucket/x.jpg\n")
    assert read_input_list(txt) == [str(photos / "img0.png"), str(photos / "img1.png"), "s3://bucket/x.jpg"]
    csv = tmp_path / "list.csv"
    csv.write_text(f"id,path\n1,{photos / 'img2.png'}\n2,\"{photos / 'img3.png'}\"\n")
    assert read_input_list(csv) == [str(photos / "img2.png"), str(photos / "img3.png")]
    headless = tmp_path / "bare.csv"
    headless.write_text(f"{photos / 'img2.png'},x\n")
    assert read_input_list(headless) == [str(photos / "img2.png")]
    # file:// inputs are local paths (the local engine's names); other schemes go through pyarrow
    plan, failed = ray_engine.plan_inputs([f"file://{photos}", "nosuchscheme://nowhere/x.jpg"], tmp_path / "o")
    assert sorted(map(str, plan)) == sorted(str(p) for p in photos.iterdir())
    assert len(failed) == 1 and failed[0][0] == "nosuchscheme://nowhere/x.jpg"
    assert ray_engine.is_uri("s3://b/k") and ray_engine.is_uri("gs://b/k") and not ray_engine.is_uri("/a/b.png")
    assert not ray_engine.is_uri(f"file://{photos}")


def test_object_store_listing_and_download_through_pyarrow(photos, tmp_path):
    """The remote path (list a prefix, download an object) on pyarrow's local filesystem."""
    keys, failed = ray_engine.list_uri(f"file://{photos}/")
    assert failed == [] and keys == sorted(f"file://{p}" for p in photos.iterdir())
    assert ray_engine.list_uri(f"file://{photos}/nothing") == ([], [(f"file://{photos}/nothing",
                                                                    "no such object or prefix")])
    assert ray_engine.object_uri("s3://b/pre/?region=eu-west-1", "b/pre", "b/pre/x/y.jpg") == \
        "s3://b/pre/x/y.jpg?region=eu-west-1"
    got = ray_engine.download(f"file://{photos}/img0.png")  # what an actor does with a URI
    assert got.read_bytes() == (photos / "img0.png").read_bytes()
    got.unlink()
    with pytest.raises(ray_engine.CracklocError, match="no such object"):
        ray_engine.download(f"file://{photos}/missing.png")


def test_save_mask_writes_only_the_heatmap_pngs_as_the_local_engine(local_ray, photos, model_file, tmp_path):
    ray_dir, local = tmp_path / "ray", tmp_path / "local"
    assert main(_argv(photos, ray_dir, model_file, "--save", "mask", "--engine", "ray", "--workers", "1")) == 1
    assert main(_argv(photos, local, model_file, "--save", "mask")) == 1
    want = [f"img{i}_heatmap.png" for i in range(N_IMAGES)]
    assert sorted(p.name for p in ray_dir.glob("*.png")) == sorted(p.name for p in local.glob("*.png")) == want
    got, ref = _by_path(ray_dir), _by_path(local)
    assert got.keys() == ref.keys()
    for path, rec in ref.items():
        assert got[path]["heatmap_png"] == rec["heatmap_png"] and "overlay_png" not in got[path]
        assert got[path]["crack_probability"] == pytest.approx(rec["crack_probability"], abs=1e-4)


def test_a_refused_ray_run_leaves_the_earlier_results_as_they_were(local_ray, photos, model_file, tmp_path,
                                                                  capsys):
    """#27: `--workers 64` on 2 CPUs is refused before anything in --out is touched."""
    out = tmp_path / "out"
    two = [str(photos / "img0.png"), str(photos / "img1.png")]
    assert main(["predict", *two, "--out", str(out), "--checkpoint", str(model_file), "--tile", "64"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 1 + 1 + 6  # predictions.jsonl, the lock file, 3 PNGs per image
    capsys.readouterr()
    assert main(["predict", *two, "--out", str(out), "--checkpoint", str(model_file), "--tile", "64",
                 "--engine", "ray", "--workers", "64"]) == 2
    assert "--workers 64" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
