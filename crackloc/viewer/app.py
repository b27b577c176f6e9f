"""The inspection viewer's page (Gradio): one photo, a folder, exports. Logic lives in `logic`.

Every handler turns any failure into a line in the page (`Error: ...`), never a stack trace, and
the server keeps serving. File access: `allowed_paths` is empty, so Gradio serves only what
the page uploaded or what a handler returned (copied into its cache); the folder boxes accept
only paths inside `--folder` (and `--out`), resolved with symlinks and `..`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from crackloc.errors import CracklocError
from crackloc.io import IMAGE_EXTENSIONS
from crackloc.viewer.compare_tab import CompareTab
from crackloc.viewer.folders import FolderItem, FolderJob, resolve_inside, thumbnail
from crackloc.viewer.logic import (
    MAP_THRESHOLD,
    OVERLAY_ALPHA,
    TABLE_HEADERS,
    MappedPhoto,
    check_threshold,
    export_files,
    parse_mm_per_px,
    render_view,
)
from crackloc.viewer.mapper import LRU, PhotoMapper

MAP_WORKERS = 2  # photos mapped at once (their model batches take turns: a small upload is not stuck behind a big one)

log = logging.getLogger(__name__)

PROGRESS = gr.Progress()  # the marker Gradio looks for in a handler's defaults (one instance, as usual)
EXPORT_MAX_AGE_S = 3600  # exported files older than this are deleted
CSS = """
#status p { margin: 0.2em 0; }
#summary p { margin: 0.3em 0; }
"""


def _problem(exc: BaseException) -> str:
    """One readable line for the page; unexpected errors are logged with their traceback on the server."""
    if isinstance(exc, CracklocError):
        return f"**Error:** {exc}"
    log.exception("viewer handler failed")
    detail = " ".join(str(exc).split())[:200]
    return f"**Error:** unexpected ({type(exc).__name__}: {detail}); the server keeps running"


def _table(rows: list[list[Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=TABLE_HEADERS)


class Viewer:
    """The state shared by every browser session: the mapper (model + cache), the roots, temp files."""

    def __init__(self, mapper: PhotoMapper, *, folder: Path | None = None, out: Path | None = None,
                 max_upload_mb: int = 200) -> None:
        self.mapper, self.max_upload_mb = mapper, max_upload_mb
        self.root = folder.resolve() if folder is not None else None
        self.out = (out or (self.root / "crackloc_maps" if self.root else None))
        self.out = self.out.resolve() if self.out is not None else None
        self.tmp = Path(tempfile.mkdtemp(prefix="crackloc-viewer-"))
        self._jobs = LRU(4)
        self._thumbs = LRU(2000)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=MAP_WORKERS, thread_name_prefix="crackloc-map")
        self._stops: dict[str, threading.Event] = {}  # session → its Stop button's event

    # ---- one photo ----------------------------------------------------------------------

    def _map(self, path: str, name: str, cfg, progress, session: str | None = None) -> MappedPhoto:
        """Map a photo in a worker thread while the page's progress bar follows the expected time.

        The session's Stop button (`stop_map`) ends it at the model's next batch of windows.
        """
        started: dict[str, float] = {}

        def on_start(height: int, width: int, expected: float) -> None:
            started.update(t=time.perf_counter(), expected=max(expected, 0.5), mp=height * width / 1e6)

        stop = self._stops.setdefault(session or "", threading.Event())
        stop.clear()
        future = self._pool.submit(self.mapper.map_photo, path, cfg, name=name, on_start=on_start, stop=stop)
        progress(0.0, desc=f"reading {name}")
        while True:
            try:
                return future.result(timeout=0.4)
            except concurrent.futures.TimeoutError:
                if "t" in started:
                    elapsed = time.perf_counter() - started["t"]
                    progress(min(0.97, elapsed / started["expected"]),
                             desc=f"mapping {name} ({started['mp']:.1f} MP), {elapsed:.0f} s of "
                                  f"~{started['expected']:.0f} s")

    def stop_map(self, request: gr.Request = None) -> str:
        """The Stop button: end this session's running map (the other sessions' maps go on)."""
        stop = self._stops.get(_session(request))
        if stop is None:
            return "Nothing is being mapped."
        stop.set()
        return "Stopping the map…"

    def _photo(self, state: dict, progress=None) -> MappedPhoto:
        """The photo in this session's state, from the cache (or mapped again if it was evicted)."""
        if not state or "key" not in state:
            raise CracklocError("upload a photo first")
        photo = self.mapper.cached(state["key"])
        if photo is None:  # pushed out of the cache by other photos: map it again (uploads are kept 2 h)
            cfg = self.mapper.settings(**state["cfg"])
            photo = self._map(state["path"], state["name"], cfg, progress or (lambda *a, **k: None))
        return photo

    def _show(self, photo: MappedPhoto, threshold: float, opacity: float, mm: Any, selected: int | None):
        mm_per_px = parse_mm_per_px(mm)
        threshold = check_threshold(threshold)
        report = self.mapper.report(photo, threshold, mm_per_px)
        if selected is not None and all(c.index != selected for c in report.cracks):
            selected = None
        view = render_view(photo, report, threshold=threshold, opacity=float(opacity), selected=selected)
        self.mapper.prefetch(photo, threshold)  # the next slider moves are measured while the page is idle
        return view

    def _empty(self, message: str):
        return {}, None, "", _table([]), message, None, None

    def map_upload(self, path: str | None, scale: float, tile: float, threshold: float, opacity: float,
                   mm: Any, name: str | None = None, progress=PROGRESS, request: gr.Request = None):
        """Upload or 'map again': → state, overlay, summary, table, status, exports and upload box (both emptied)."""
        if not path:
            return self._empty("Upload a photo (JPEG, PNG, BMP or TIFF) to map its cracks.")
        name = name or Path(path).name
        try:
            cfg = self.mapper.settings(scale=scale, tile=None if tile is None else int(tile))
            photo = self._map(path, name, cfg, progress, session=_session(request))
            view = self._show(photo, threshold, opacity, mm, None)
        except Exception as exc:
            return self._empty(_problem(exc))
        state = {"key": photo.key, "path": str(path), "name": name, "cfg": dataclasses.asdict(cfg),
                 "threshold": float(threshold), "selected": None}
        notes = [f"**{name}**: " + ("map taken from the cache (same photo and settings), model not run."
                                     if photo.cached else f"mapped in {photo.seconds:.1f} s.")]
        if photo.grayscale:
            notes.append("Note: grayscale photo, mapped with its grey level in all three colour channels "
                         "(the model was trained on colour photos; check the result).")
        return state, view.overlay, view.summary, _table(view.rows), "\n\n".join(notes), None, None

    def redraw(self, state: dict, threshold: float, opacity: float, mm: Any, progress=PROGRESS):
        """Threshold, opacity or scale moved: re-measure without running the model."""
        try:
            photo = self._photo(state, progress)
            selected = state.get("selected") if state.get("threshold") == float(threshold) else None
            view = self._show(photo, threshold, opacity, mm, selected)
        except Exception as exc:
            return state, gr.update(), gr.update(), gr.update(), _problem(exc)
        state = {**state, "threshold": float(threshold), "selected": selected}
        return state, view.overlay, view.summary, _table(view.rows), ""

    def select_crack(self, state: dict, threshold: float, opacity: float, mm: Any, evt: gr.SelectData):
        """A table row was clicked: highlight that crack (its index is the row's first cell)."""
        try:
            row = evt.row_value if evt.row_value is not None else None
            index = int(float(row[0])) if row else None
            photo = self._photo(state)
            view = self._show(photo, threshold, opacity, mm, index)
        except Exception as exc:
            return state, gr.update(), _problem(exc)
        state = {**state, "threshold": float(threshold), "selected": index}
        c = next((c for c in view.report.cracks if c.index == index), None)
        return state, view.overlay, ("" if c is None else f"Crack #{index} highlighted in magenta.")

    def export(self, state: dict, threshold: float, mm: Any, progress=PROGRESS):
        """Write predict's files (+ mask and CSV) for the current settings: → file list, status."""
        try:
            photo = self._photo(state, progress)
            threshold = check_threshold(threshold)
            report = self.mapper.report(photo, threshold, parse_mm_per_px(mm))
            progress(0.3, desc="writing the files")
            self._prune_exports()
            folder = Path(tempfile.mkdtemp(prefix="export-", dir=self.tmp))
            paths = export_files(photo, report, folder, threshold=threshold)
        except Exception as exc:
            return None, _problem(exc)
        return [str(p) for p in paths], (f"Exported {len(paths)} files at map threshold {threshold:.2f} "
                                         "(predict's overlay, heatmap and JSON line, plus the mask and the crack CSV)")

    def _prune_exports(self) -> None:
        now = time.time()
        for d in self.tmp.glob("export-*"):
            if now - d.stat().st_mtime > EXPORT_MAX_AGE_S:
                shutil.rmtree(d, ignore_errors=True)

    # ---- a folder -----------------------------------------------------------------------

    def _out_folder(self, text: str) -> Path:
        """The output folder box: inside --folder, or inside --out (both set by whoever started the server)."""
        raw = (text or "").strip()
        if not raw:
            return self.out
        for base in dict.fromkeys((self.root, self.out)):
            try:
                return resolve_inside(raw, base)
            except CracklocError:
                continue
        raise CracklocError(f"{raw}: outside the served folder {self.root} and the output folder {self.out}")

    def _job(self, folder: Path, out: Path, mm_per_px: float | None) -> FolderJob:
        key = (str(folder), str(out), mm_per_px)
        job = self._jobs.get(key)
        if job is None or not job.running:  # a finished job is redone: new photos, new results on disk
            job = FolderJob(self.mapper, folder, out, root=self.root, mm_per_px=mm_per_px).start()
            self._jobs.put(key, job)
        return job

    def _thumb(self, it: FolderItem, out: Path) -> str | None:
        name = it.record.get("overlay_png") or it.record.get("heatmap_png")  # predict --save mask: the map
        if not name:  # predict --save record: no picture
            return None
        png = (out / str(name)).resolve()
        if not png.is_relative_to(out) or not png.is_file():
            return None
        key = f"{png}:{png.stat().st_mtime_ns}"
        cached = self._thumbs.get(key)
        if cached is None:
            target = self.tmp / "thumbs" / (hashlib.sha1(key.encode()).hexdigest() + ".jpg")
            target.parent.mkdir(exist_ok=True)
            Image.fromarray(thumbnail(png)).save(target, quality=85)
            cached = str(target)
            self._thumbs.put(key, cached)
        return cached

    def _gallery(self, job: FolderJob):
        items, paths = [], []
        for it in job.ranked():
            if it.record is None:
                continue
            try:
                thumb = self._thumb(it, job.out)
            except Exception:  # a damaged PNG: show the photo without thumbnail
                log.exception("thumbnail of %s failed", it.photo)
                thumb = None
            if thumb is None:
                continue
            crack = "crack" if it.record.get("crack") else "no crack"
            items.append((thumb, f"{it.probability:.3f} · {crack} · {it.name}"))
            paths.append(str(it.photo))
        failed = [f"- {it.name}: {it.error}" for it in job.items if it.error]
        text = job.progress_text() + ("\n\nFailed:\n" + "\n".join(failed) if failed else "")
        return items, text, paths

    def map_folder(self, folder_text: str, out_text: str, mm: Any):
        """Rank a folder's photos by crack probability; new maps appear as they are computed."""
        if self.root is None:
            yield [], "**Error:** start the server with `--folder DIR` to open a folder of photos", []
            return
        try:
            folder = resolve_inside(folder_text or str(self.root), self.root)
            out = self._out_folder(out_text)
            job = self._job(folder, out, parse_mm_per_px(mm))
        except Exception as exc:
            yield [], _problem(exc), []
            return
        last = None
        while True:
            running = job.running
            if job.done != last or not running:
                last = job.done
                yield self._gallery(job)
            if not running:
                return
            time.sleep(1.0)

    def open_from_gallery(self, paths: list[str], scale: float, tile: float, threshold: float,
                          opacity: float, mm: Any, evt: gr.SelectData, progress=PROGRESS,
                          request: gr.Request = None):
        """A gallery photo was clicked: map it in the 'One photo' tab."""
        try:
            index = evt.index if isinstance(evt.index, int) else evt.index[0]
            photo = resolve_inside(paths[index], self.root)
        except Exception as exc:
            return (gr.Tabs(selected="photo"), *self._empty(_problem(exc)))
        name = photo.relative_to(self.root).as_posix()
        return (gr.Tabs(selected="photo"),
                *self.map_upload(str(photo), scale, tile, threshold, opacity, mm, name=name, progress=progress,
                                 request=request))

    # ---- the page -----------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        cfg = self.mapper.base_cfg
        exts = list(IMAGE_EXTENSIONS)
        with gr.Blocks(title="crackloc viewer", delete_cache=(1800, 7200)) as demo:  # uploads kept 2 h
            gr.Markdown("## crackloc · crack inspection viewer\nA photo of any size is mapped once by "
                        "the model (tiled, as `crackloc predict`); the sliders then re-threshold and "
                        "re-measure the map without running the model again.")
            state = gr.State({})
            with gr.Tabs(selected="photo") as tabs:
                with gr.Tab("One photo", id="photo"):
                    with gr.Row():
                        with gr.Column(scale=1, min_width=300):
                            upload = gr.File(label=f"Photo (JPEG, PNG, BMP, TIFF; up to {self.max_upload_mb} MB and "
                                                   f"{self.mapper.max_pixels / 1e6:g} MP)", file_types=exts,
                                             type="filepath", elem_id="upload")
                            status = gr.Markdown("Upload a photo to map its cracks.", elem_id="status")
                            stop_btn = gr.Button("Stop mapping", elem_id="stop", variant="stop", size="sm")
                            threshold = gr.Slider(0.05, 0.95, value=MAP_THRESHOLD, step=0.01,
                                                  label="map threshold (crack where the map ≥ this; predict uses 0.5)",
                                                  elem_id="threshold")
                            opacity = gr.Slider(0.0, 1.0, value=OVERLAY_ALPHA, step=0.05, label="overlay opacity",
                                                elem_id="opacity")
                            mm = gr.Number(value=None, label="photo scale, mm per px (0: lengths in px only)",
                                           minimum=0, elem_id="mm-per-px")
                            with gr.Accordion("Model settings (changing them maps the photo again)", open=False):
                                scale = gr.Number(value=cfg.scale, label="model scale (resize before tiling; "
                                                  "cracks should look 10–30 px wide)", minimum=0.01, maximum=64,
                                                  step=0.05, elem_id="model-scale")
                                tile = gr.Number(value=cfg.tile, label="tile (px)", precision=0, minimum=32,
                                                 maximum=4096, step=16, elem_id="model-tile")
                                remap = gr.Button("Map again with these settings", elem_id="remap")
                            export_btn = gr.Button("Export mask, overlay, CSV and JSON line", elem_id="export")
                            exports = gr.File(label="exported files", file_count="multiple", interactive=False,
                                              elem_id="exports")
                        with gr.Column(scale=2):
                            overlay_img = gr.Image(label="overlay (skeletons yellow, boxes cyan, selected magenta)",
                                                   type="numpy", format="jpeg", interactive=False,
                                                   elem_id="overlay")
                            summary_md = gr.Markdown(elem_id="summary")
                            table = gr.Dataframe(value=_table([]), headers=TABLE_HEADERS,
                                                 datatype=["number"] * len(TABLE_HEADERS), interactive=False,
                                                 label="cracks (sort from a header's ⋮ menu; click a row to highlight that crack)",
                                                 elem_id="cracks")
                with gr.Tab("Folder", id="folder"):
                    with gr.Row():
                        folder_box = gr.Textbox(value=str(self.root or ""), label="folder (inside the served folder)",
                                                interactive=self.root is not None, elem_id="folder")
                        out_box = gr.Textbox(value=str(self.out or ""), label="output folder (predict's --out; "
                                             "its predictions.jsonl and PNGs are reused)",
                                             interactive=self.root is not None, elem_id="out")
                    folder_btn = gr.Button("Map folder", variant="primary", interactive=self.root is not None,
                                           elem_id="map-folder")
                    folder_status = gr.Markdown("" if self.root else "Start the server with `--folder DIR` to "
                                                "open a folder of photos.", elem_id="folder-status")
                    gallery = gr.Gallery(label="photos by crack probability (click one to inspect it)", columns=4,
                                         fit_columns=False, allow_preview=False, object_fit="contain",
                                         height="auto", buttons=[], elem_id="gallery")
                    gallery_paths = gr.State([])
                CompareTab(self.mapper, self.tmp).build()

            shown = [state, overlay_img, summary_md, table, status, exports, upload]  # upload emptied: ready for the next
            maps = {"concurrency_id": "map", "concurrency_limit": MAP_WORKERS}  # 2 maps at once, the rest queued
            upload.upload(self.map_upload, [upload, scale, tile, threshold, opacity, mm], shown, **maps)
            remap.click(self.map_upload_again, [state, scale, tile, threshold, opacity, mm], shown, **maps)
            stop_btn.click(self.stop_map, None, status, queue=False)  # not behind the maps in the queue
            redraw_out = [state, overlay_img, summary_md, table, status]
            for control in (threshold, opacity, mm):
                control.change(self.redraw, [state, threshold, opacity, mm], redraw_out,
                               trigger_mode="always_last", show_progress="minimal")
            table.select(self.select_crack, [state, threshold, opacity, mm], [state, overlay_img, status])
            export_btn.click(self.export, [state, threshold, mm], [exports, status])
            folder_btn.click(self.map_folder, [folder_box, out_box, mm], [gallery, folder_status, gallery_paths])
            gallery.select(self.open_from_gallery, [gallery_paths, scale, tile, threshold, opacity, mm],
                           [tabs, *shown], **maps)
        return demo

    def map_upload_again(self, state: dict, scale: float, tile: float, threshold: float, opacity: float, mm: Any,
                         progress=PROGRESS, request: gr.Request = None):
        """'Map again with these settings' on the photo already shown."""
        if not state or "path" not in state:
            return self._empty("**Error:** upload a photo first")
        return self.map_upload(state["path"], scale, tile, threshold, opacity, mm, name=state["name"],
                               progress=progress, request=request)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _session(request: gr.Request | None) -> str:
    """The browser session a request comes from ('' outside a request: tests, scripts)."""
    return str(getattr(request, "session_hash", None) or "")


def _stopper(viewer: Viewer) -> Callable[[int, Any], None]:
    """A SIGTERM/SIGINT handler that stops the server at once, even while a map runs.

    Waiting for the mapping threads (and Gradio's graceful shutdown) kept `serve` alive for
    minutes, and a second Ctrl-C then aborted in C++. Finished outputs are already on disk
    (each written atomically), so the handler removes the viewer's temp files and exits.
    """
    def stop(signum: int, frame: Any) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        shutil.rmtree(viewer.tmp, ignore_errors=True)
        print(f"crackloc serve: stopped ({signal.Signals(signum).name})", file=sys.stderr, flush=True)
        os._exit(0)
    return stop


def theme() -> gr.themes.Base:
    """The default theme with system fonts (no font downloads: the page works offline)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def serve(mapper: PhotoMapper, *, host: str = "127.0.0.1", port: int = 7860, folder: Path | None = None,
          out: Path | None = None, max_upload_mb: int = 200) -> None:
    """Build the page and serve it until interrupted (blocks)."""
    viewer = Viewer(mapper, folder=folder, out=out, max_upload_mb=max_upload_mb)
    demo = viewer.build()
    demo.queue(max_size=64)
    if threading.current_thread() is threading.main_thread():  # `kill` and Ctrl-C: temp files go, within 1 s
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _stopper(viewer))
    try:
        demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=False,
                    allowed_paths=[], max_file_size=f"{max_upload_mb}mb", ssr_mode=False, mcp_server=False,
                    theme=theme(), css=CSS, footer_links=[], quiet=False)
    finally:
        viewer.close()

