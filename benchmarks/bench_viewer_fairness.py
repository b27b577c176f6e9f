"""Is a second client's small upload answered while `crackloc serve` maps a 12 MP photo for another?

Starts `crackloc serve` (bundled model, its defaults) on a free port and talks to it through
Gradio's client, as two browsers would. Client A uploads the sample photo upscaled to 4032×3024
(`benchmarks.bench_viewer.make_photo`); once A's map runs, client B uploads a 227 px Özgenel
patch (bundled sample). Printed: B's time alone (before A), B's time while A maps, A's time, and the ratios.

    python -m benchmarks.bench_viewer_fairness
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks.bench_viewer import make_photo
from benchmarks.common import cpu_model
from crackloc.inference.predictor import ASSETS

DELAY = 5.0  # s between A's upload and B's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/", timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"crackloc serve did not start (exit code {proc.poll()})")


def _upload(client, path: Path) -> float:
    from gradio_client import handle_file

    t0 = time.perf_counter()
    result = client.predict(handle_file(str(path)), 1.0, 224, 0.5, 0.55, None, api_name="/map_upload")
    if not result[0]:  # the state is empty when the map failed
        raise SystemExit(f"{path.name}: the upload was not mapped: {result[4]}")
    return time.perf_counter() - t0


def main() -> None:
    from gradio_client import Client

    print(cpu_model())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big = make_photo(tmp / "big.jpg", ASSETS / "sample_photo.jpg")
        warm, alone_patch, during_patch = sorted((ASSETS / "sample" / "Positive").glob("*.jpg"))[:3]  # 3 contents
        port = _free_port()
        env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False"}
        proc = subprocess.Popen([sys.executable, "-m", "crackloc", "serve", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait(url, proc)
            a, b = Client(url, verbose=False), Client(url, verbose=False)
            _upload(b, warm)  # the model's first run
            alone = _upload(b, alone_patch)  # maps are cached by content: each patch is another photo
            times: dict[str, float] = {}
            run = threading.Thread(target=lambda: times.update(big=_upload(a, big)))
            run.start()
            time.sleep(DELAY)  # A's photo is uploaded and its map under way
            during = _upload(b, during_patch)
            run.join()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"small upload alone: {alone:.2f} s; sent {DELAY:.0f} s into a 12 MP map: answered in {during:.2f} s "
          f"({during / alone:.1f}x alone); the 12 MP map took {times['big']:.1f} s in all")

if __name__ == "__main__":
    main()
