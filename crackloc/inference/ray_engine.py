"""Batch prediction on a Ray cluster with Ray Data: `crackloc predict --engine ray`.

The same outputs as the local engine (`crackloc.inference.batch`): per image the three PNGs
and one line of `predictions.jsonl`, plus `failed.jsonl` and a Parquet summary
`summary.parquet` (one row per image). It writes through the same `OutputFolder`
(`crackloc.inference.outputs`: output names, the resume rule, the record commit), and each actor
maps with the local engine's `FileMapper` and renders with the same `image_outputs`.

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
from crackloc.inference.batch import BatchInterrupted, FileMapper, expand_inputs
from crackloc.inference.outdir import output_lock
from crackloc.inference.outputs import (
    BatchReport,
    OutputFolder,
    Outputs,
    image_outputs,
    plan_outputs,
    png_names,
    safe_stem,
    write_pngs,
)
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
class ActorMapper:
    """`make_mapper` of the Ray engine: builds each actor's `FileMapper` (small and picklable; the
    model file's bytes come once through the object store)."""

    model_path: str  # the driver's model file (named in messages)
    model_ref: list  # [ObjectRef of its bytes]
    cfg: InferenceConfig
    threshold: float
    max_pixels: int | None
    line_guide: bool
    cache_dir: str | None
    threads: int

    def __call__(self) -> FileMapper:
        import ray
        import torch

        from crackloc.inference.predictor import Predictor

        torch.set_num_threads(max(1, self.threads))
        with tempfile.TemporaryDirectory(prefix="crackloc-ray-") as tmp:  # the model is read once, here
            checkpoint = Path(tmp) / Path(self.model_path).name
            checkpoint.write_bytes(ray.get(self.model_ref[0]))
            predictor = Predictor(checkpoint, self.cfg, threshold=self.threshold, cache_dir=self.cache_dir)
        predictor.checkpoint = Path(self.model_path)  # errors name the user's model file
        return FileMapper(predictor, max_pixels=self.max_pixels, line_guide=self.line_guide)


def download(uri: str) -> Path:
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


class PhotoWorker:
    """One actor of the pool: one mapper; decodes, tiles, predicts and writes each photo's PNGs.

    `__call__` takes a batch of rows {path, stem} and returns one row per image: the record
    (JSON text) or the reason it failed; a failed write (disk full) is returned as its errno so
    the driver stops the run as the local engine does.
    """

    def __init__(self, make_mapper: ActorMapper, out: str, outputs: Outputs) -> None:
        self.map_one, self.out, self.outputs = make_mapper(), Path(out), outputs

    def _one(self, key: str, stem: str) -> dict[str, Any]:
        source = None
        row: dict[str, Any] = {"path": key, "record": "", "error": "", "write_errno": 0, "write_error": ""}
        try:
            if is_uri(key):
                source = download(key)
            mapped = self.map_one(key if is_uri(key) else Path(key), source)
            rec, pngs = image_outputs(mapped, self.outputs, path=key, stem=stem)
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
    if geometry and any("total_length_mm" in (r.get("geometry") or {}) for r in report.records):  # a scale or marker
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
                      marker: str | None = None, max_pixels: int | None = None, resume: bool = False, save: str = "all",
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
    outputs = Outputs(save=save, geometry=geometry or mm_per_px is not None or marker is not None,
                      mm_per_px=mm_per_px, marker=marker)
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
    probe = Predictor(checkpoint, dataclasses.replace(cfg, backend="torch", compile=False, device="cpu"),
                      threshold=threshold)  # a bad model file fails here, in one line, before Ray starts
    threshold, made = probe.threshold, outputs.made_by(probe)
    del probe
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        plan, failed = plan_inputs(inputs, out)
        started, folder, pool = False, OutputFolder(out, outputs), None
        try:
            if plan:  # the cluster and its resources are checked before anything in `out` is touched
                started = _start_ray(ray, address, log)
                pool = _pool(ray, workers, cpus_per_worker, gpus_per_worker, local=address is None)
            todo = folder.begin(plan, failed, resume=resume or resume_mixed, log=log, made=made,
                                overwrite=overwrite, mixed=resume_mixed)
            make_mapper = ActorMapper(
                model_path=str(checkpoint), model_ref=[ray.put(checkpoint.read_bytes())] if todo else [],
                cfg=dataclasses.replace(cfg, device="cuda") if pool and pool[2] else cfg, threshold=threshold,
                max_pixels=max_pixels, line_guide=outputs.line_guide,
                cache_dir=str(cache_dir) if cache_dir else None, threads=max(1, int(pool[1])) if pool else 1)
            _run(todo, make_mapper, folder, pool=pool, progress=progress, log=log)
        finally:
            if started:
                with suppress(Exception):
                    ray.shutdown()
    return folder.report


def _pool(ray, workers: int | None, cpus: float | None, gpus: float | None, *, local: bool
          ) -> tuple[int, float, float]:
    """The actor pool's (workers, CPUs and GPUs per worker), checked against the cluster's resources."""
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("GPU", 0))) if gpus is None or gpus else 1
    cpus, gpus = _resources(ray, workers, cpus, gpus, local=local)
    return workers, cpus, gpus


def _run(todo: list[tuple[Path | str, str]], make_mapper: ActorMapper, folder: OutputFolder, *,
         pool: tuple[int, float, float] | None, progress: bool, log: Callable[[str], None]) -> None:
    """Run `todo` on the pool, then write failed.jsonl and the summary; a stopped run keeps what is done."""
    total, geometry = folder.report.resumed + len(todo), folder.outputs.geometry
    try:
        if todo:
            workers, cpus, gpus = pool
            log(f"ray: {len(todo)} image(s) on {workers} worker(s), {cpus:g} CPU(s)"
                f"{f' and {gpus:g} GPU(s)' if gpus else ''} each")
            run_ray(todo, make_mapper, folder, pool=pool, progress=progress)
    except KeyboardInterrupt:
        _finish(folder, geometry)
        raise BatchInterrupted(len(folder.report.records), total) from None
    except BaseException:
        _finish(folder, geometry)
        raise
    finally:
        if todo:  # no worker writes any more: clear what stopped ones left
            _drop_unrecorded(folder, todo)
    folder.finish()
    write_summary(folder.out, folder.report, geometry=geometry)


def _finish(folder: OutputFolder, geometry: bool) -> None:
    """Best effort on the way out of a stopped run: failed.jsonl and the summary of what is done."""
    with suppress(Exception):
        folder.finish()
    with suppress(Exception):
        write_summary(folder.out, folder.report, geometry=geometry)


def _drop_unrecorded(folder: OutputFolder, todo: list[tuple[Path | str, str]]) -> None:
    """Remove what workers that were stopped mid-image left in `out`: the PNGs of `todo` images
    without a record, and the temp files of interrupted atomic writes (`.NAME.XXXX.tmp`)."""
    out, done = folder.out, {r["path"] for r in folder.report.records}
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


def run_ray(todo: list[tuple[Path | str, str]], make_mapper: ActorMapper, folder: OutputFolder, *,
            pool: tuple[int, float, float], progress: bool = True) -> None:
    """The Ray engine: stream `todo` through an actor pool (each actor runs `make_mapper()` once)
    and commit each record as it arrives."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    workers, cpus, gpus = pool
    items = [{"path": str(p), "stem": stem} for p, stem in todo]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
    ds = ds.map_batches(PhotoWorker, batch_size=1, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=workers),
                        fn_constructor_args=(make_mapper, str(folder.out.resolve()), folder.outputs),
                        num_cpus=cpus, num_gpus=gpus)
    report, total = folder.report, folder.report.resumed + len(todo)
    done = {r["path"] for r in report.records} | {p for p, _ in report.failed}
    with folder.writing():
        try:
            for row in ds.iter_rows():
                _take(row, folder, done, total=total)
        except (CracklocError, KeyboardInterrupt):
            raise
        except Exception as exc:  # the pipeline itself failed (an actor that cannot start, a lost cluster)
            text = " ".join(str(exc).split())
            raise CracklocError(f"the Ray pipeline stopped after {len(report.records)} of {total} images "
                                f"({type(exc).__name__}: {text[-300:]}); their results are kept: rerun the "
                                "same command with --resume to finish") from None


def _take(row: dict, folder: OutputFolder, done: set[str], *, total: int) -> None:
    """Commit one worker row: its record (PNGs already on disk), its failure, or a write error."""
    path = str(row["path"])
    if path in done:  # a retried image (its actor died after sending the row): already taken
        return
    if int(row["write_errno"]):
        raise folder.write_failed(OSError(int(row["write_errno"]), str(row["write_error"])), path, total)
    if row["error"]:
        folder.fail(path, str(row["error"]))
        done.add(path)
        return
    rec = json.loads(row["record"])
    missing = [rec[k] for k in png_names("") if k in rec and not (folder.out / rec[k]).is_file()]
    if missing:
        raise CracklocError(f"{folder.out}: a worker wrote {missing[0]} where this "
                            "machine cannot see it: on a cluster, --out must be a folder every node shares (NFS, "
                            "EFS, a PVC mounted on every pod)")
    folder.commit_written(rec)
    done.add(path)
