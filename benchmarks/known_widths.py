"""Known crack widths, end to end: draw cracks of 1, 3, 7 and 15 px, run `crackloc predict
--geometry` on the image file, and compare each crack's reported mean width with the drawn one.

    python -m benchmarks.known_widths [--checkpoint MODEL.pt] [-- extra predict options, e.g. --auto-scale]

One 1200×900 photo per width (`known_width_photo`, one crack each), so a per-photo option such
as `--auto-scale` sees one crack width at a time. Prints drawn vs measured mean width, the
crack's length, and the error; exit status 1 if any width is off by more than 1 px.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

from crackloc.cli import main as crackloc_main
from crackloc.data.synthetic import known_width_photo
from crackloc.inference.geometry import measure_cracks
from crackloc.io import save_png

WIDTHS = (1, 3, 7, 15)


def measured_widths(out: Path, *, widths: tuple[float, ...] = WIDTHS, size: tuple[int, int] = (900, 1200),
                    checkpoint: str | None = None, options: tuple[str, ...] = ()) -> list[dict]:
    """Draw one photo per width (`size` = (h, w)) into `out`, map them with `crackloc predict
    --geometry`, and return per width: drawn width, the drawn crack's length, and the reported
    mean width and length of the longest crack found (None if none)."""
    names, drawn_lengths = [], []
    for w in widths:
        image, masks = known_width_photo((w,), h=size[0], w=size[1], seed=int(w))
        drawn_lengths.append(measure_cracks(masks[0].numpy()).total_length_px)
        names.append(save_png(out / f"width_{w:g}px.png", image.permute(1, 2, 0).numpy()))
    args = ["predict", *map(str, names), "--out", str(out / "maps"), "--geometry", *options]
    if checkpoint:
        args += ["--checkpoint", checkpoint]
    if crackloc_main(args) != 0:
        raise RuntimeError("crackloc predict failed")
    records = {Path(r["path"]).name: r for r in map(json.loads, (out / "maps/predictions.jsonl").open())}
    rows = []
    for w, name, length in zip(widths, names, drawn_lengths, strict=True):
        cracks = records[Path(name).name]["geometry"]["cracks"]
        longest = max(cracks, key=lambda c: c["length_px"], default=None)
        rows.append({"drawn_px": w, "drawn_length_px": round(length, 1),
                     "mean_width_px": longest and longest["mean_width_px"],
                     "length_px": longest and longest["length_px"], "cracks": len(cracks),
                     "scale": records[Path(name).name].get("scale")})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="model file (default: the bundled model)")
    p.add_argument("--size", default="900,1200", help="photo height,width (default 900,1200)")
    p.add_argument("--widths", default=",".join(f"{w:g}" for w in WIDTHS),
                   help="drawn widths in px (default %(default)s; #23 asks for 1,2,3,7,15 at scale 1)")
    p.add_argument("options", nargs="*", help="more `crackloc predict` options (after --)")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        size = tuple(int(v) for v in a.size.split(","))
        widths = tuple(float(v) for v in a.widths.split(","))
        rows = measured_widths(Path(tmp), widths=widths, size=size, checkpoint=a.checkpoint, options=tuple(a.options))
    ok = True
    print("drawn px | measured mean width px | error px | length px (drawn) | cracks | scale")
    for r in rows:
        err = None if r["mean_width_px"] is None else r["mean_width_px"] - r["drawn_px"]
        ok &= err is not None and abs(err) <= 1
        print(f"{r['drawn_px']:>8} | {r['mean_width_px']} | {err if err is None else round(err, 2)} | "
              f"{r['length_px']} ({r['drawn_length_px']}) | {r['cracks']} | {r['scale']}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
