"""The viewer's Compare tab: two photos of one surface → the change overlay, a before/after swipe and the
crack change table (the columns of `crackloc compare`'s changes.csv)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from crackloc.change.compare import (
    RegistrationError,
    changes_csv,
    compare_files,
    crack_rows_csv,
)
from crackloc.errors import CracklocError
from crackloc.io import load_rgb, write_json, write_text
from crackloc.viewer.logic import parse_mm_per_px
from crackloc.viewer.mapper import PhotoMapper

log = logging.getLogger(__name__)


def change_table(text: str | None = None) -> pd.DataFrame:
    """The rows of a changes.csv text (None: the header only)."""
    text = crack_rows_csv([]) if text is None else text
    return pd.DataFrame(list(csv.DictReader(io.StringIO(text))), columns=next(csv.reader(io.StringIO(text))))


class CompareTab:
    """Compares two uploaded photos with the viewer's model (its batches take turns with the other tabs' maps)."""

    def __init__(self, mapper: PhotoMapper, tmp: Path) -> None:
        self.mapper, self.tmp = mapper, tmp

    def compare(self, before: str | None, after: str | None, mm: Any, marker: str | None
                ) -> tuple[Any, np.ndarray | None, pd.DataFrame, str, list[str] | None]:
        """Upload pair → (swipe images, change overlay, table, status, files to download)."""
        empty = (None, None, change_table())
        if not before or not after:
            return (*empty, "Upload a BEFORE and an AFTER photo of the same surface.", None)
        try:
            mm_per_px = parse_mm_per_px(mm)
            spec = (marker or "").strip() or None
            predictor = self.mapper.predictor(self.mapper.base_cfg)  # its batches take turns with other maps
            result, record, pngs = compare_files(predictor, Path(before), Path(after), mm_per_px=mm_per_px,
                                                 marker=spec)
        except RegistrationError as exc:
            return (*empty, f"**Not one surface:** {exc}", None)
        except CracklocError as exc:
            return (*empty, f"**Error:** {exc}", None)
        except Exception as exc:  # the server keeps running
            log.exception("compare failed")
            return (*empty, f"**Error:** unexpected ({type(exc).__name__})", None)
        out = self.tmp / f"compare-{record['before_sha256'][:12]}-{record['after_sha256'][:12]}"
        out.mkdir(parents=True, exist_ok=True)
        table = changes_csv(result.report)
        files = [write_json(out / "changes.json", record), write_text(out / "changes.csv", table)]
        counts = ", ".join(f"{n} {s}" for s, n in record["counts"].items() if n) or "no cracks"
        status = f"Registered with {result.registration.rms_px:.2f} px residual: {counts}."
        if record.get("marker") and not record["marker"]["found"]:
            status += f" Marker {spec} not found in BEFORE: lengths and widths in px only."
        swipe = (load_rgb(Path(before)), pngs["after_registered"])
        return swipe, pngs["change_overlay"], change_table(table), status, [str(f) for f in files]

    def build(self) -> None:
        """The tab's components and events (inside the page's `gr.Tabs`)."""
        with gr.Tab("Compare", id="compare"):
            gr.Markdown("Two photos of one surface from two inspections (any angle, distance and light): AFTER "
                        "is registered onto BEFORE, both are mapped, and each crack is reported as new, grown, "
                        "unchanged or no longer visible (as `crackloc compare`).")
            with gr.Row():
                before = gr.File(label="BEFORE (the earlier photo)", type="filepath", elem_id="compare-before")
                after = gr.File(label="AFTER (the later photo)", type="filepath", elem_id="compare-after")
                with gr.Column():
                    mm = gr.Number(value=None, label="BEFORE's scale, mm per px (0: px only)", minimum=0,
                                   elem_id="compare-mm")
                    marker = gr.Textbox(label="or a printed marker in BEFORE, e.g. aruco:4x4_50:50",
                                        elem_id="compare-marker")
                    run = gr.Button("Compare", variant="primary", elem_id="compare-run")
            status = gr.Markdown(elem_id="compare-status")
            with gr.Row():
                swipe = gr.ImageSlider(label="BEFORE ↔ AFTER registered (drag the handle)", type="numpy",
                                       elem_id="compare-swipe")
                overlay = gr.Image(label="change: unchanged grey, grown orange, new red, no longer visible blue",
                                   type="numpy", format="jpeg", interactive=False, elem_id="compare-overlay")
            table = gr.Dataframe(value=change_table(), interactive=False, label="crack changes (as changes.csv)",
                                 elem_id="compare-table")
            files = gr.File(label="changes.json and changes.csv", file_count="multiple", interactive=False,
                            elem_id="compare-files")
        run.click(self.compare, [before, after, mm, marker], [swipe, overlay, table, status, files],
                  concurrency_id="map")  # queued behind the other tabs' maps
