"""Test utilities: run the `crackloc` CLI in a subprocess that holds still at a chosen call.

Signal tests (Ctrl-C, SIGKILL) must land their signal at a known point, whatever the CPU's
speed: the subprocess wraps one function (`module:Class.method`); on its N-th call it touches a
marker file and waits (in short sleeps) until a signal arrives. The test waits for the
marker, then sends its signal. No sleep decides where the signal lands.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HOLD_SCRIPT = """\
import importlib, os, runpy, time
from pathlib import Path

module, attr = os.environ["CRACKLOC_HOLD_AT"].split(":")
call, marker = int(os.environ["CRACKLOC_HOLD_CALL"]), Path(os.environ["CRACKLOC_HOLD_MARKER"])
owner = importlib.import_module(module)
*parents, name = attr.split(".")
for part in parents:
    owner = getattr(owner, part)
original, calls = getattr(owner, name), [0]


def held(*args, **kwargs):
    calls[0] += 1
    if calls[0] == call and os.environ.get("LOCAL_RANK", "0") == "0":  # DDP: rank 0 holds, the others wait on it
        marker.touch()
        while True:
            time.sleep(0.05)  # SIGINT raises KeyboardInterrupt here; SIGKILL ends the process
    return original(*args, **kwargs)


setattr(owner, name, held)
runpy.run_module("crackloc.cli", run_name="__main__")  # sys.argv[0] stays this file: DDP's launcher re-runs it
"""


def start_held(argv: list[str], *, at: str, call: int, marker: Path, env: dict | None = None,
               **popen) -> subprocess.Popen:
    """Start `crackloc ARGV` in a subprocess that holds at the `call`-th call of `at` (`module:Qual.name`)."""
    env = {**os.environ, **(env or {}), "CRACKLOC_HOLD_AT": at, "CRACKLOC_HOLD_CALL": str(call),
           "CRACKLOC_HOLD_MARKER": str(marker)}
    # a file named crackloc*, so `crackloc train` knows itself and Lightning's DDP launcher re-runs it
    script = marker.with_name(f"crackloc_hold_{marker.name}.py")
    script.write_text(HOLD_SCRIPT)
    return subprocess.Popen([sys.executable, str(script), *map(str, argv)], env=env, **popen)


def wait_held(proc: subprocess.Popen, marker: Path, *, timeout: float = 600.0) -> None:
    """Return once `proc` holds (its marker exists); AssertionError if it ends or times out first."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the subprocess ended (rc {proc.returncode}) before it reached its hold point")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the subprocess did not reach its hold point in {timeout:.0f} s")
        time.sleep(0.01)  # polling a condition (the marker), not timing the signal


def wait_for_server(url: str, proc: subprocess.Popen, log: Path, *, timeout: float = 180.0) -> None:
    """Return once `url` answers; pytest.fail with the server's log if it exits or times out first."""
    import urllib.request

    import pytest

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"crackloc serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/", timeout=10):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"crackloc serve did not answer within {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.5)
