"""Batch prediction on a Ray cluster with Ray Data: `crackloc predict --engine ray`.

The same outputs as the local engine (`crackloc.inference.batch`): per image the three PNGs
and one line of `predictions.jsonl`, plus `failed.jsonl` and a Parquet summary
`summary.parquet` (one row per image). The pieces are the local engine's own: output names
(`plan_outputs`), the resume rule (`start_run`), one image's prediction (`predict_one`, one
`Predictor` per actor), atomic PNG writes (`write_pngs`) and the durable record append
(`commit_record` on one `RecordWriter`).

The pipeline: the driver lists the inputs (folders, files, `s3://`/`gs://`/… URIs read with
pyarrow's filesystems) and names the outputs; Ray Data carries only (path, output stem) rows to
an actor pool (`map_batches` with a callable class, one actor per worker). Each actor decodes
and tiles its photos itself, runs the model and writes the PNGs into `--out` (a folder every
worker can write: the local disk on one machine, a shared mount on a cluster), and sends back
one small row per image: the record or the reason it failed. The driver appends each record as
it streams in, so an image is finished the moment its line is on disk, whatever happens to the
workers later; Ray Data restarts a killed actor and retries its unfinished images.

`ray` is imported only when this engine runs.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from crackloc.config import InferenceConfig
from crackloc.errors import CracklocError
from crackloc.inference.batch import (
    BatchInterrupted,
    BatchReport,
    RecordWriter,
    commit_record,
    expand_inputs,
    made_by,
    plan_outputs,
    png_names,
    predict_one,
    safe_stem,
    save_failed,
    start_run,
    write_error,
    write_pngs,
)
from crackloc.inference.outdir import output_lock
from crackloc.io import IMAGE_EXTENSIONS, atomic_write, failure_reason

RAY_REQUIREMENT = "ray[data]>=2.10"  # from_items(override_num_blocks=…)
MAX_BLOCKS = 20_000  # one image per block up to this many (finer blocks: finer commits, better balance)
SUMMARY = "summary.parquet"


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise CracklocError(f"--engine ray needs Ray Data: pip install 'crackloc[ray]' (or '{RAY_REQUIREMENT}')") \
            from None
    return ray


# ---- inputs ------------------------------------------------------------------------------------


def is_uri(item: str | Path) -> bool:
    """A `scheme://…` input other than `file://` (read through pyarrow's filesystems)."""
    text = str(item)
    scheme = text.split("://", 1)[0] if "://" in text else ""
    return bool(scheme) and scheme.isascii() and scheme.replace("+", "").replace("-", "").isalnum() \
        and scheme.lower() != "file"


def local_path(item: str | Path) -> str | Path:
    """`file:///x/y` → `/x/y`; anything else unchanged."""
    text = str(item)
    return unquote(urlparse(text).path) if text.lower().startswith("file://") else item


def _filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) of a URI; credentials come from the environment."""
    from pyarrow import fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # unknown scheme, no credentials, pyarrow built without S3/GCS
        raise CracklocError(f"{uri}: cannot open ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:160]})") from None


def object_uri(uri: str, root: str, path: str) -> str:
    """The URI of `path`, found under `root` (the path `uri` opened), keeping `uri`'s options (`?region=…`)."""
    head, sep, query = uri.partition("?")
    return head.rstrip("/") + path[len(root.rstrip("/")):] + sep + query


def list_uri(uri: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Image objects at a URI: the object itself, or every image under a prefix (recursively)."""
    from pyarrow import fs as pafs

    try:
        filesystem, base = _filesystem(uri)
        info = filesystem.get_file_info(base)
        if info.type == pafs.FileType.File:
            return [uri], []
        if info.type == pafs.FileType.NotFound:
            return [], [(uri, "no such object or prefix")]
        found = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except CracklocError as exc:
        return [], [(uri, failure_reason(exc, uri))]
    except Exception as exc:  # permission denied, network
        return [], [(uri, f"cannot list ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})")]
    root = base.rstrip("/")
    keys = sorted(object_uri(uri, root, f.path) for f in found
                  if f.type == pafs.FileType.File and f.path.startswith(root)
                  and PurePosixPath(f.path).suffix.lower() in IMAGE_EXTENSIONS)
    return keys, ([] if keys else [(uri, "prefix holds no images (jpg/png/bmp/tif)")])


def plan_inputs(inputs: list[str | Path], out: Path
                ) -> tuple[dict[Path | str, str], list[tuple[str, str]]]:
    """Every input (local files and folders as the local engine expands them, then URIs) → its
    output stem, and the inputs that failed to list. Local inputs get the local engine's names."""
    local, uris, failed = [], [], []
    for item in inputs:
        (uris if is_uri(item) else local).append(item if is_uri(item) else local_path(item))
    files, bad = expand_inputs(local, exclude=out)
    failed += bad
    used: set[str] = set()
    plan: dict[Path | str, str] = dict(plan_outputs(files, used=used))
    keys: list[str] = []
    for uri in uris:
        found, bad = list_uri(str(uri))
        keys += found
        failed += bad
    for key in sorted(set(keys)):
        plan[key] = safe_stem(Path(PurePosixPath(urlparse(key).path).name or "image"), used)
    return plan, failed


# ---- the worker --------------------------------------------------------------------------------


@dataclasses.dataclass
class WorkerSpec:
    """What each actor needs to build its `Predictor` and write its outputs (small, picklable)."""

    model_path: str  # the driver's model file (named in messages; its bytes come by the object store)
    cfg: InferenceConfig
    threshold: float
    out: str
    geometry: bool
    mm_per_px: float | None
    max_pixels: int | None
    cache_dir: str | None
    threads: int
    save: str = "all"


class PhotoWorker:
    """One actor of the pool: one `Predictor`; decodes, tiles, predicts and writes each photo.

    `__call__` takes a batch of rows {path, stem} and returns one row per image: the record
    (JSON text) or the reason it failed; a failed write (disk full) is returned as its errno so
    the driver stops the run as the local engine does.
    """

    def __init__(self, spec: WorkerSpec, model_ref: list) -> None:
        import ray
        import torch

        from crackloc.inference.predictor import Predictor

        torch.set_num_threads(max(1, spec.threads))
        self.spec, self.out = spec, Path(spec.out)
        with tempfile.TemporaryDirectory(prefix="crackloc-ray-") as tmp:  # the model is read once, here
            checkpoint = Path(tmp) / Path(spec.model_path).name
            checkpoint.write_bytes(ray.get(model_ref[0]))
            self.predictor = Predictor(checkpoint, spec.cfg, threshold=spec.threshold, cache_dir=spec.cache_dir)
        self.predictor.checkpoint = Path(spec.model_path)  # errors name the user's model file
        self.load_kwargs = {"max_pixels": spec.max_pixels} if spec.max_pixels else {}

    @staticmethod
    def _download(uri: str) -> Path:
        """Copy an object to a local temp file (decoded there like any local file; the caller deletes it)."""
        filesystem, path = _filesystem(uri)
        fd, name = tempfile.mkstemp(prefix="crackloc-ray-", suffix=PurePosixPath(urlparse(uri).path).suffix.lower())
        try:
            with filesystem.open_input_stream(path) as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
        except BaseException as exc:
            Path(name).unlink(missing_ok=True)
            if isinstance(exc, FileNotFoundError):
                raise CracklocError(f"{uri}: no such object") from None
            if isinstance(exc, OSError):
                raise CracklocError(f"{uri}: cannot read ({' '.join(str(exc).split())[:160]})") from None
            raise
        return Path(name)

    def _one(self, key: str, stem: str) -> dict[str, Any]:
        spec, source = self.spec, None
        row: dict[str, Any] = {"path": key, "record": "", "error": "", "write_errno": 0, "write_error": ""}
        try:
            if is_uri(key):
                source = self._download(key)
            rec, pngs = predict_one(self.predictor, key if is_uri(key) else Path(key), stem,
                                    geometry=spec.geometry, mm_per_px=spec.mm_per_px,
                                    load_kwargs=self.load_kwargs, source=source, save=spec.save)
        except CracklocError as exc:
            row["error"] = failure_reason(exc, key)
            return row
        except Exception as exc:  # one image must never stop the pool
            row["error"] = f"prediction failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
            return row
        finally:
            if source is not None:
                source.unlink(missing_ok=True)
        try:
            write_pngs(self.out, pngs)
        except OSError as exc:
            row["write_errno"] = exc.errno or -1
            row["write_error"] = " ".join(str(exc).split()) or type(exc).__name__
            return row
        row["record"] = json.dumps(rec)
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [self._one(str(key), str(stem)) for key, stem in zip(batch["path"], batch["stem"], strict=True)]
        return {k: [r[k] for r in rows] for k in ("path", "record", "error", "write_errno", "write_error")}


# ---- the summary -------------------------------------------------------------------------------


def write_summary(out: Path, report: BatchReport, *, geometry: bool) -> Path:
    """`summary.parquet`: one row per image (finished or failed), sorted by path, written atomically.

    Columns: path, crack_probability, crack, error; with geometry also n_cracks,
    total_length_px, max_width_px (and total_length_mm, max_width_mm when a scale was given).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    geo_cols = ["n_cracks", "total_length_px", "max_width_px"]
    if geometry and any((r.get("geometry") or {}).get("mm_per_px") for r in report.records):
        geo_cols += ["total_length_mm", "max_width_mm"]
    source = {"n_cracks": "count"}
    rows = []
    for rec in report.records:
        row = {"path": rec["path"], "crack_probability": rec.get("crack_probability"), "crack": rec.get("crack"),
               "error": None}
        if geometry:
            geo = rec.get("geometry") or {}
            row.update({c: geo.get(source.get(c, c)) for c in geo_cols})
        rows.append(row)
    for path, reason in report.failed:
        rows.append({"path": path, "crack_probability": None, "crack": None, "error": reason,
                     **({c: None for c in geo_cols} if geometry else {})})
    types = {"path": pa.string(), "crack_probability": pa.float64(), "crack": pa.bool_(), "error": pa.string(),
             "n_cracks": pa.int64(), "total_length_px": pa.float64(), "max_width_px": pa.float64(),
             "total_length_mm": pa.float64(), "max_width_mm": pa.float64()}
    names = ["path", "crack_probability", "crack", *(geo_cols if geometry else []), "error"]
    schema = pa.schema([(n, types[n]) for n in names])
    rows.sort(key=lambda r: r["path"])
    table = pa.Table.from_pylist([{n: r.get(n) for n in names} for r in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return atomic_write(out / SUMMARY, lambda f: f.write(buf.getvalue()))


# ---- the driver --------------------------------------------------------------------------------


def _start_ray(ray, address: str | None, log: Callable[[str], None]) -> bool:
    """Join `address` or start a local instance with this machine's cores: → whether we started it."""
    if ray.is_initialized():
        return False
    if address:
        log(f"joining the Ray cluster at {address}")
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise CracklocError(f"--address {address}: no Ray cluster there ({' '.join(str(exc).split())[:200]}); "
                                "start one with `ray start --head`, or leave out --address") from None
    else:
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,  # a new one, even
                 logging_level=logging.WARNING)  # if `ray start` runs here (that needs --address auto)
    return True


def _resources(ray, workers: int, cpus: float | None, gpus: float | None, *, local: bool
               ) -> tuple[float, float]:
    """CPUs and GPUs per actor: GPUs (1 each) when the cluster has any, else its cores split evenly."""
    total = ray.cluster_resources()
    if gpus is None:
        gpus = 1.0 if total.get("GPU", 0) >= 1 else 0.0
    if cpus is None:
        node_cpus = max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
        cpus = 1.0 if gpus else float(max(1, min(int(total.get("CPU", 1)) // workers, int(node_cpus))))
    need = workers * cpus
    if local and need > total.get("CPU", 0):
        raise CracklocError(f"--workers {workers} × {cpus:g} CPUs each needs {need:g} CPUs, this machine's Ray "
                            f"has {total.get('CPU', 0):g}: use fewer --workers or --cpus-per-worker")
    if local and gpus and workers * gpus > total.get("GPU", 0):
        raise CracklocError(f"--workers {workers} × {gpus:g} GPUs each needs {workers * gpus:g} GPUs, this "
                            f"machine's Ray has {total.get('GPU', 0):g}")
    return cpus, gpus


def predict_files_ray(checkpoint: str | Path | None, cfg: InferenceConfig, inputs: list[str | Path],
                      out: str | Path, *, geometry: bool = False, mm_per_px: float | None = None,
                      max_pixels: int | None = None, resume: bool = False, save: str = "all",
                      overwrite: bool = False, resume_mixed: bool = False, workers: int | None = None,
                      address: str | None = None, cpus_per_worker: float | None = None,
                      gpus_per_worker: float | None = None, threshold: float | None = None,
                      cache_dir: str | Path | None = None, progress: bool = True,
                      log: Callable[[str], None] | None = None) -> BatchReport:
    """`predict_files` on a Ray actor pool: the same outputs plus `summary.parquet`.

    Args:
        checkpoint: Model file (default: the bundled model); sent to every actor once.
        cfg: How to run it (the same `InferenceConfig` as the local engine; the device becomes
            `cuda` on GPU actors).
        inputs: Files, folders, and URIs pyarrow reads (`s3://bucket/prefix`, `gs://…`).
        out: Output folder; on a multi-node cluster, a mount every worker shares.
        resume: Keep the images already done in `out` (as the local engine's `resume`).
        save: Which PNGs each image gets: all, mask or record (as the local engine's `save`).
        workers: Actors in the pool (default: one per GPU of the cluster, else 1).
        address: Ray cluster to join (`auto`: the one `ray start` made here); default: start a
            local Ray with this machine's cores and shut it down at the end.
        cpus_per_worker, gpus_per_worker: Resources per actor (default: 1 GPU and 1 CPU each when
            the cluster has GPUs, else its CPUs split evenly; torch uses that many threads).

    Raises:
        BatchInterrupted: on Ctrl-C; finished images are on disk.
        CracklocError: bad model file, an output that cannot be written, a failed pipeline.
    """
    from crackloc.inference.predictor import Predictor, default_checkpoint

    if is_uri(out):
        raise CracklocError(f"--out {out}: write the outputs to a folder (on a cluster: a mount every worker "
                            "shares), not to an object-store URI")
    ray = _import_ray()
    out, log = Path(out), log or (lambda message: None)
    geometry = geometry or mm_per_px is not None
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
    probe = Predictor(checkpoint, dataclasses.replace(cfg, backend="torch", compile=False, device="cpu"),
                      threshold=threshold)  # a bad model file fails here, in one line, before Ray starts
    threshold, made = probe.threshold, made_by(probe, geometry=geometry, mm_per_px=mm_per_px)
    del probe
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        plan, failed = plan_inputs(inputs, out)
        started, pool = False, None
        try:
            if plan:  # the cluster and its resources are checked before anything in `out` is touched
                started = _start_ray(ray, address, log)
                pool = _pool(ray, workers, cpus_per_worker, gpus_per_worker, local=address is None)
            report, todo = start_run(out, plan, failed, resume=resume or resume_mixed, log=log, save=save,
                                     made=made, overwrite=overwrite, mixed=resume_mixed)
            _run(ray, checkpoint, cfg, todo, out, report, geometry=geometry, mm_per_px=mm_per_px,
                 max_pixels=max_pixels, save=save, pool=pool, threshold=threshold, cache_dir=cache_dir,
                 progress=progress, log=log)
        finally:
            if started:
                with suppress(Exception):
                    ray.shutdown()
    return report


def _run(ray, checkpoint: Path, cfg: InferenceConfig, todo: list[tuple[Path | str, str]], out: Path,
         report: BatchReport, *, geometry: bool, pool: tuple | None, **options) -> None:
    """Run `todo` on the pool, then write failed.jsonl and the summary; a stopped run keeps what is done."""
    total, completed = report.resumed + len(todo), False
    try:
        if todo:
            _run_pipeline(ray, checkpoint, cfg, todo, out, report, total=total, geometry=geometry, pool=pool,
                          **options)
        completed = True
    except KeyboardInterrupt:
        _finish(out, report, geometry)
        raise BatchInterrupted(len(report.records), total) from None
    except BaseException:
        _finish(out, report, geometry)
        raise
    finally:
        if todo:  # no worker writes any more: clear what stopped ones left
            _drop_unrecorded(out, todo, report)
    if completed:
        save_failed(out, report.failed)
        write_summary(out, report, geometry=geometry)


def _drop_unrecorded(out: Path, todo: list[tuple[Path | str, str]], report: BatchReport) -> None:
    """Remove what workers that were stopped mid-image left in `out`: the PNGs of `todo` images
    without a record, and the temp files of interrupted atomic writes (`.NAME.XXXX.tmp`)."""
    done = {r["path"] for r in report.records}
    names = {name for _, stem in todo for name in png_names(stem).values()}
    for path, stem in todo:
        if str(path) not in done:
            for name in png_names(stem).values():
                with suppress(OSError):
                    (out / name).unlink(missing_ok=True)
    with suppress(OSError), os.scandir(out) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp") \
                    and entry.name[1:-4].rsplit(".", 1)[0] in names:
                with suppress(OSError):
                    os.unlink(entry.path)


def _finish(out: Path, report: BatchReport, geometry: bool) -> None:
    """Best effort on the way out of a stopped run: failed.jsonl and the summary of what is done."""
    with suppress(Exception):
        save_failed(out, report.failed)
    with suppress(Exception):
        write_summary(out, report, geometry=geometry)


def _pool(ray, workers: int | None, cpus: float | None, gpus: float | None, *, local: bool
          ) -> tuple[int, float, float]:
    """The actor pool's (workers, CPUs and GPUs per worker), checked against the cluster's resources."""
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("GPU", 0))) if gpus is None or gpus else 1
    cpus, gpus = _resources(ray, workers, cpus, gpus, local=local)
    return workers, cpus, gpus


def _run_pipeline(ray, checkpoint: Path, cfg: InferenceConfig, todo: list[tuple[Path | str, str]], out: Path,
                  report: BatchReport, *, total: int, geometry: bool, mm_per_px: float | None,
                  max_pixels: int | None, save: str, pool: tuple[int, float, float], threshold: float,
                  cache_dir: str | Path | None, progress: bool, log: Callable[[str], None]) -> None:
    """Stream `todo` through the actor pool and commit each record as it arrives."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    workers, cpus, gpus = pool
    spec = WorkerSpec(model_path=str(checkpoint),
                      cfg=dataclasses.replace(cfg, device="cuda") if gpus else cfg, threshold=threshold,
                      out=str(out.resolve()), geometry=geometry, mm_per_px=mm_per_px,
                      max_pixels=max_pixels, cache_dir=str(cache_dir) if cache_dir else None,
                      threads=max(1, int(cpus)), save=save)
    model_ref = ray.put(checkpoint.read_bytes())
    log(f"ray: {len(todo)} image(s) on {workers} worker(s), {cpus:g} CPU(s)"
        f"{f' and {gpus:g} GPU(s)' if gpus else ''} each")
    items = [{"path": str(p), "stem": stem} for p, stem in todo]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
    ds = ds.map_batches(PhotoWorker, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                        fn_constructor_args=(spec, [model_ref]), num_cpus=cpus, num_gpus=gpus)
    done = {r["path"] for r in report.records} | {p for p, _ in report.failed}
    with RecordWriter(out / "predictions.jsonl") as writer:
        try:
            for row in ds.iter_rows():
                _take(row, out, report, writer, done, total=total)
        except (CracklocError, KeyboardInterrupt):
            raise
        except Exception as exc:  # the pipeline itself failed (an actor that cannot start, a lost cluster)
            text = " ".join(str(exc).split())
            raise CracklocError(f"the Ray pipeline stopped after {len(report.records)} of {total} images "
                                f"({type(exc).__name__}: {text[-300:]}); their results are kept: rerun the "
                                "same command with --resume to finish") from None


def _take(row: dict, out: Path, report: BatchReport, writer: RecordWriter, done: set[str], *,
          total: int) -> None:
    """Commit one worker row: its record (PNGs already on disk), its failure, or a write error."""
    path = str(row["path"])
    if path in done:  # a retried image (its actor died after sending the row): already taken
        return
    if int(row["write_errno"]):
        raise write_error(OSError(int(row["write_errno"]), str(row["write_error"])), out, path,
                          len(report.records), total)
    if row["error"]:
        report.failed.append((path, str(row["error"])))
        done.add(path)
        return
    rec = json.loads(row["record"])
    files = [rec[k] for k in png_names("") if k in rec]  # those its --save asked for
    missing = [f for f in files if not (out / f).is_file()]
    if missing:
        raise CracklocError(f"{out}: a worker wrote {missing[0]} where this machine cannot see it: on a cluster, "
                            "--out must be a folder every node shares (NFS, EFS, a PVC mounted on every pod)")
    commit_record(out, rec, files, writer, done=report.records.append)
    done.add(path)
