"""Photos per second of `crackloc predict`: the local engine vs `--engine ray` with 1 and 2 workers.

N copies of one 4032×3024 photo (the bundled sample photo upscaled once, as in bench_photo)
go through each engine in turn, with the same model and `InferenceConfig` defaults (bf16,
224 px tiles, overlap 0.25) and the same outputs (three full-size PNGs and one record per photo).
Each timing is one `crackloc predict` command in a fresh process, as a user runs it:

    local:  crackloc predict PHOTOS --out OUT
    ray-W:  crackloc predict PHOTOS --out OUT --engine ray --workers W --address ADDR

so both pay the same process start, imports and model load. Ray itself runs as a local
instance with this machine's cores that this script starts once, before timing (as a running
cluster would be; its start-up time is printed apart); each Ray timing includes its actors'
start-up (a model load each) and the Parquet summary. The local engine uses torch's default
threads; a Ray worker gets the cores divided among the workers. Ray runs its workers at
niceness 15 by default; here at 0 (`RAY_worker_niceness=0`), as the local command, so that on a
shared machine both compete alike for the cores. The engines alternate (local, ray-1, ray-2,
local, …) over `--rounds`, and the medians are reported.

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
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks.bench_photo import make_photo
from benchmarks.common import cpu_model, table
from crackloc.inference.outputs import read_records
from crackloc.inference.predictor import ASSETS


def _children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _predict(argv: list[str], out: Path, n: int) -> float:
    """Wall seconds of one `crackloc predict` command; checks that it did all n photos."""
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "crackloc.cli", "predict", *argv, "--out", str(out)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    done = len(read_records(out / "predictions.jsonl"))
    if proc.returncode != 0 or done != n:
        raise SystemExit(f"crackloc predict {' '.join(argv)}: exit {proc.returncode}, {done} of {n} photos\n"
                         f"{proc.stderr[-2000:]}")
    return wall


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

    pools = [int(w) for w in a.workers.split(",") if w.strip()]
    model = ["--checkpoint", a.checkpoint] if a.checkpoint else []
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
        ray_start = time.perf_counter() - t0
        address = ray.get_runtime_context().gcs_address

        def local() -> float:
            c = _children_cpu_seconds()
            wall = _predict([str(photos), *model], root / "out-local", a.n)
            cpu.append((_children_cpu_seconds() - c) / a.n)
            return wall

        def on_ray(workers: int) -> float:
            return _predict([str(photos), *model, "--engine", "ray", "--workers", str(workers), "--address", address],
                            root / f"out-ray{workers}", a.n)

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
    print(f"Ray local instance start-up (once, not in the times): {ray_start:.1f} s; each time is one "
          "`crackloc predict` command in a fresh process")
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
