"""`crackloc serve` stops within 5 s of SIGTERM while it maps a photo (#27), no browser needed.

The server maps a folder through its HTTP API; the mapping is held (as a long map would be) in
`PhotoMapper.map_photo` by the hold helper, and the server is sent SIGTERM there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import start_held, wait_for_server, wait_held

SAMPLE = Path(__file__).resolve().parents[1] / "crackloc" / "assets" / "sample_photo.jpg"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_within_5_s_of_a_signal_while_mapping(tmp_path, sig):
    root, marker, log = tmp_path / "photos", tmp_path / "held", tmp_path / "serve.log"
    root.mkdir()
    shutil.copy(SAMPLE, root / "wall.jpg")
    port = _free_port()
    env = {"GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with log.open("w") as out:
        proc = start_held(["serve", "--port", port, "--folder", root], at="crackloc.viewer.mapper:PhotoMapper.map_photo",
                          call=1, marker=marker, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_server(url, proc, log)
            request = urllib.request.Request(url + "/gradio_api/call/map_folder", method="POST",
                                             data=json.dumps({"data": ["", "", None]}).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as r:
                assert r.status == 200
            wait_held(proc, marker, timeout=120)  # the folder job is now mapping wall.jpg
            assert list(tmp_path.glob("crackloc-viewer-*"))  # the viewer's temp folder
            t0 = time.monotonic()
            proc.send_signal(sig)
            rc = proc.wait(timeout=30)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert rc == 0 and took < 5.0, (rc, took, text[-2000:])
    assert f"crackloc serve: stopped ({signal.Signals(sig).name})" in text
    assert "Traceback" not in text and "terminate called" not in text, text[-2000:]
    assert not list(tmp_path.glob("crackloc-viewer-*"))  # temp files removed
    assert not os.path.exists(root / "crackloc_maps" / "wall_overlay.png")  # the held map never finished
