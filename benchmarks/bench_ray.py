"""Photos per second of `crackloc predict`: the local engine vs `--engine ray` with 1 and 2 workers.

N copies of one 4032×3024 photo (the bundled sample photo upscaled once, as in bench_photo)
go through each engine in turn, in one process, with the same model and `InferenceConfig`
defaults (bf16, 224 px tiles, overlap 0.25), the same outputs (three full-size PNGs and one
record per photo). Ray runs on a local instance with this machine's cores, started once before
timing (as a running cluster would be); each Ray timing includes its actors' start-up (a model
load each) and the Parquet summary. The local engine runs in this process with torch's default
threads; a Ray worker gets the cores divided among the workers, as `--engine ray` does. Ray
runs its workers at niceness 15 by default; here they run at 0 (`RAY_worker_niceness=0`), like
this process, so that on a shared machine both engines compete alike for the cores. The engines
alternate (local, ray-1, ray-2, local, …) over `--rounds`, and the medians are reported.

    python -m benchmarks.bench_ray [--n 50] [--workers 1,2] [--rounds 1] [--checkpoint MODEL.pt]

Prints a Markdown table and the overhead ratio (Ray with 1 worker) / local, wall time
(target ≤ 1.15), and the local engine's CPU seconds per photo (the input of the throughput
model in docs/scale.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks.bench_photo import make_photo
from benchmarks.common import cpu_model, table
from crackloc.config import InferenceConfig
from crackloc.inference.batch import predict_files
from crackloc.inference.predictor import ASSETS, Predictor


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50, help="photos per run (default 50)")
    p.add_argument("--workers", default="1,2", help="Ray pool sizes to time, comma-separated (default 1,2)")
    p.add_argument("--rounds", type=int, default=1, help="repeat local, ray… this many times; medians (default 1)")
    p.add_argument("--checkpoint", help="model file (default: the bundled model)")
    p.add_argument("--photo", help="a photo to use instead of the upscaled sample")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    import ray

    from crackloc.inference.ray_engine import predict_files_ray

    pools = [int(w) for w in a.workers.split(",") if w.strip()]
    cfg = InferenceConfig()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        root = Path(tmp)
        src = Path(a.photo) if a.photo else make_photo(root / "photo.jpg", ASSETS / "sample_photo.jpg")
        photos = root / "photos"
        photos.mkdir()
        for i in range(a.n):
            shutil.copyfile(src, photos / f"photo{i:04d}{src.suffix.lower()}")

        os.environ.setdefault("RAY_worker_niceness", "0")  # the raylet passes it to its workers
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="error")
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_start = time.perf_counter() - t0

        def local() -> float:
            out = root / "out-local"
            shutil.rmtree(out, ignore_errors=True)
            t, c = time.perf_counter(), _cpu_seconds()
            report = predict_files(Predictor(a.checkpoint, cfg), [photos], out, progress=False)
            wall = time.perf_counter() - t
            cpu.append((_cpu_seconds() - c) / a.n)
            assert len(report.records) == a.n and not report.failed, report.failed
            return wall

        def on_ray(workers: int) -> float:
            out = root / f"out-ray{workers}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            report = predict_files_ray(a.checkpoint, cfg, [photos], out, workers=workers, progress=False)
            wall = time.perf_counter() - t
            assert len(report.records) == a.n and not report.failed, report.failed
            return wall

        cpu: list[float] = []
        runs: dict[str, list[float]] = {"local": [], **{f"ray-{w}": [] for w in pools}}
        for _ in range(a.rounds):
            runs["local"].append(local())
            for w in pools:
                runs[f"ray-{w}"].append(on_ray(w))
        ray.shutdown()
    load_after = os.getloadavg()
    wall = {k: statistics.median(v) for k, v in runs.items()}
    cores = os.cpu_count() or 1
    rows = []
    for key, secs in wall.items():
        workers = 0 if key == "local" else int(key.split("-")[1])
        threads = torch.get_num_threads() if key == "local" else max(1, cores // workers)
        rows.append([key if key == "local" else "ray", "—" if key == "local" else str(workers), str(threads),
                     f"{secs:.1f}", f"{secs / a.n:.2f}", f"{a.n / secs:.3f}", f"{secs / wall['local']:.3f}"])
    print(f"CPU: {cpu_model()}")
    print(f"{a.n} photos of 4032×3024, bf16, tile 224, overlap 0.25; median of {a.rounds} round(s); "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"Ray local instance start-up (once, not in the times): {ray_start:.1f} s")
    print(table(rows, ["engine", "workers", "torch threads each", "wall s", "s/photo", "photos/s",
                       "time vs local"]))
    result = {"n": a.n, "rounds": a.rounds, "wall_s": wall, "runs_s": runs, "ray_start_s": ray_start,
              "local_cpu_s_per_photo": statistics.median(cpu), "load_before": load_before,
              "load_after": load_after}
    if "ray-1" in wall:
        result["overhead_ray1_vs_local"] = wall["ray-1"] / wall["local"]
        per_round = [r / loc for r, loc in zip(runs["ray-1"], runs["local"], strict=True)]
        result["overhead_per_round"] = per_round
        print(f"overhead Ray 1 worker / local: {result['overhead_ray1_vs_local']:.3f} (target ≤ 1.15; per round: "
              f"{', '.join(f'{x:.3f}' for x in per_round)})")
    print(f"local engine CPU time per photo: {result['local_cpu_s_per_photo']:.1f} CPU-s "
          f"(wall {wall['local'] / a.n:.2f} s on {cores} cores)")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
