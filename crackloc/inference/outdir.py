"""An output folder's rules: one writer at a time, earlier results never emptied, resume never mixes.

- `output_lock`: an exclusive lock on `OUT/.crackloc.lock` (`flock`) for the whole run; a second
  run into the folder is refused, naming the holder's process id. The kernel drops the lock when
  its process dies, so a killed run's lock is taken over by the next run.
- `set_aside`: a run without `--resume` moves the earlier results (the record files and the PNGs
  their records name) into `OUT/earlier-<time>/` instead of emptying them (`--overwrite` replaces).
- `check_resumable`: `--resume` keeps only records made by the same model file with the same
  settings; others are refused with what differs, unless mixing is asked for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crackloc.errors import CracklocError

try:
    import fcntl
except ImportError:  # Windows: no advisory lock (one writer per folder is then the user's care)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".crackloc.lock"
RECORDS = "predictions.jsonl"  # one JSON line per finished image; a folder holding it is an output folder
CHANGE_RECORDS = "changes.jsonl"  # `crackloc compare` on campaign folders: one JSON line per finished pair
RESULT_FILES = (RECORDS, "failed.jsonl", "summary.parquet", CHANGE_RECORDS, "changes.csv", "summary.csv")
# what a run writes besides PNGs


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold `out`'s lock for the block; CracklocError names the process that holds it already."""
    if fcntl is None:
        yield
        return
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip() or "unknown"
            raise CracklocError(f"{out} is being written by another crackloc run (process {holder}): wait for "
                                "it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it could let two runs lock two files)


def _own_png(out: Path, name: object) -> Path | None:
    """`out/name` when `name` is a plain PNG file name of `out` that exists (never a path elsewhere)."""
    if not isinstance(name, str) or Path(name).name != name or name.startswith(".") \
            or not name.endswith(".png"):
        return None
    path = out / name
    return path if path.is_file() and not path.is_symlink() else None


def set_aside(out: Path, records: list[dict]) -> Path:
    """Move the record files of `out` and the PNGs that `records` name into a new `out/earlier-<time>/`."""
    base = out / f"earlier-{time.strftime('%Y%m%d-%H%M%S')}"
    target, k = base, 1
    while target.exists() or target.is_symlink():
        k += 1
        target = base.with_name(f"{base.name}-{k}")
    target.mkdir()
    for name in RESULT_FILES:
        if (out / name).is_file():
            os.replace(out / name, target / name)
    for rec in records:
        for key, name in rec.items():
            path = _own_png(out, name) if key.endswith("_png") else None
            if path is not None:
                os.replace(path, target / name)
    return target


def _difference(rec: dict, made_by: dict) -> str:
    """What differs between a record's maker and this run's, in a few words."""
    if rec.get("model") is None or rec.get("settings") is None:
        return "a crackloc version that did not record its model and settings"
    if rec["model"] != made_by["model"]:
        return f"another model file (sha256 {rec['model']}…, this run's is {made_by['model']}…)"
    old, new = rec["settings"], made_by["settings"]
    changed = [f"{k} {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "other settings (" + ", ".join(changed[:3]) + (", …" if len(changed) > 3 else "") + ")"


def check_resumable(out: Path, records: list[dict], made_by: dict, *, mixed: bool) -> None:
    """Refuse a resume whose kept `records` were made by another model or settings (unless `mixed`)."""
    if mixed:
        return
    other = [r for r in records if r.get("model") != made_by["model"] or r.get("settings") != made_by["settings"]]
    if other:
        raise CracklocError(f"--resume: {len(other)} of the earlier results in {out} were made with "
                            f"{_difference(other[0], made_by)}; rerun with the same model and settings, choose "
                            "another --out, or add --resume-mixed to keep them as they are")


def png_stems(records: list[dict]) -> set[str]:
    """The casefolded stems of the PNGs `records` name (`<stem>_<kind>.png`)."""
    stems = set()
    for rec in records:
        for key, name in rec.items():
            if key.endswith("_png") and isinstance(name, str) and name.endswith(f"_{key[:-4]}.png"):
                stems.add(name[: -len(f"_{key[:-4]}.png")].casefold())
    return stems
