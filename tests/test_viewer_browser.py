"""`crackloc serve` end to end, in a real browser (headless Chromium from Debian, driven by Playwright).

The server runs as a subprocess with the bundled model; `crackloc predict --geometry` runs
on the same photo (into the folder's output folder, so the folder view can reuse it). The
browser uploads the sample photo, moves the sliders, exports and downloads the CSV, uploads
bad files, and opens the folder. It also saves docs/img/viewer.png (the README's screenshot).

Chromium comes from the system (`apt-get install -y chromium`; `.ci/run` installs it), never
from Playwright's own download. Without it these tests skip with that reason, unless
CRACKLOC_REQUIRE_BROWSER=1 (set by `.ci/run`) makes the missing browser a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest
from PIL import Image

from crackloc.inference.predictor import ASSETS
from crackloc.viewer.logic import read_crack_csv
from tests.helpers import wait_for_server

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "img" / "viewer.png"
SAMPLE = ASSETS / "sample_photo.jpg"
MAP_TIMEOUT_MS = 300_000  # the first map of the 1816×1362 sample on a busy 2-core machine
STEP_TIMEOUT_MS = 60_000


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        why = ("Chromium is not installed: the browser tests need it. Install it with "
               "`apt-get install -y chromium` (Debian; .ci/run does this). Playwright's own browser "
               "download is not used.")
        if os.environ.get("CRACKLOC_REQUIRE_BROWSER") == "1":
            pytest.fail(why + " (CRACKLOC_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(why + " Set CRACKLOC_REQUIRE_BROWSER=1 to make this a failure.")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A served folder with the sample photo, predict's outputs for it, and `crackloc serve` running on it."""
    tmp = tmp_path_factory.mktemp("viewer")
    root = tmp / "photos"
    root.mkdir()
    photo = root / "sample_photo.jpg"
    shutil.copy(SAMPLE, photo)
    maps = root / "crackloc_maps"  # serve's default --out for this folder
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp / "gradio"), "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    port = _free_port()
    log = open(tmp / "serve.log", "w")  # noqa: SIM115  (closed below)
    server = subprocess.Popen([sys.executable, "-m", "crackloc", "serve", "--port", str(port), "--folder", str(root)],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    predict = subprocess.run([sys.executable, "-m", "crackloc", "predict", str(photo), "--out", str(maps),
                              "--geometry", "--mm-per-px", "0.2"], capture_output=True, text=True, env=env,
                             timeout=600)
    assert predict.returncode == 0, predict.stderr
    record = json.loads((maps / "predictions.jsonl").read_text().splitlines()[0])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, server, tmp / "serve.log")
        yield {"url": url, "root": root, "record": record, "tmp": tmp}
    finally:
        server.terminate()  # SIGTERM: the server closes like on Ctrl-C
        try:
            assert server.wait(timeout=30) == 0, (tmp / "serve.log").read_text()
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    path = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright Python package is missing: pip install -e '.[dev]'", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"], headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(STEP_TIMEOUT_MS)
    pg.goto(site["url"])
    pg.wait_for_selector("#upload input[type=file]", state="attached")
    yield pg
    context.close()


def _wait_text(page, selector: str, text: str, timeout: int = STEP_TIMEOUT_MS) -> str:
    page.wait_for_function("([sel, t]) => { const e = document.querySelector(sel); return e && e.innerText.includes(t); }",
                           arg=[selector, text], timeout=timeout)
    return page.locator(selector).inner_text()


def _count(summary: str, threshold: str) -> int:
    m = re.search(rf"(\d+) cracks? at map threshold {re.escape(threshold)}", summary)
    assert m, summary
    return int(m[1])


def _rows(page) -> int:
    return int(page.locator("#cracks [role=grid]").get_attribute("aria-rowcount")) - 1  # minus the header


def _set_number(page, selector: str, value: str) -> None:
    box = page.locator(selector)
    box.fill(value)
    box.press("Enter")


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width × height (refused before any pixel is decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path


def _upload(page, path: Path) -> None:
    page.locator("#upload input[type=file]").set_input_files(str(path))


def _download(page, suffix: str) -> str:
    with page.expect_download() as info:
        page.locator(f"#exports a[download$='{suffix}']").click()
    return Path(info.value.path()).read_text()


def test_chromium_is_installed():
    # skips with the install command when it is missing; fails instead with CRACKLOC_REQUIRE_BROWSER=1 (CI)
    assert Path(_chromium()).is_file()


def _row_with_index(page, index: int, *, timeout_s: float = 20.0):
    """The rendered row of the crack table whose "#" cell is `index`, with the list scrolled to its
    top (polled until it appears: the virtual list renders only the rows near its view, and
    re-renders them as it scrolls, so the rows are read in one snapshot and then found again by
    their stable `data-index`)."""
    deadline, seen = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        page.evaluate("() => document.querySelectorAll('#cracks *').forEach("
                      "e => { if (e.scrollHeight > e.clientHeight) e.scrollTop = 0; })")  # the list's top
        page.wait_for_timeout(250)
        seen = page.locator("#cracks .virtual-row").evaluate_all(
            "rows => rows.map(r => [r.getAttribute('data-index'),"
            " (r.querySelector('[role=gridcell]') || {innerText: ''}).innerText.trim()])")
        for data_index, first_cell in seen:
            if first_cell == str(index):
                return page.locator(f"#cracks .virtual-row[data-index='{data_index}']")
    raise AssertionError(f"no rendered row for crack #{index} in the crack table (rendered: {seen})")


def test_one_photo_rethreshold_export_and_bad_uploads(page, site, tmp_path):
    record = site["record"]
    _upload(page, SAMPLE)
    summary = _wait_text(page, "#summary", "at map threshold 0.50", timeout=MAP_TIMEOUT_MS)
    n_half = _count(summary, "0.50")
    assert n_half == record["geometry"]["count"] and _rows(page) == n_half
    assert f"Crack probability {record['crack_probability']:.3f}" in summary
    assert page.locator("#overlay img").count() == 1

    _set_number(page, "#mm-per-px input", "0.2")  # predict ran with --mm-per-px 0.2
    _wait_text(page, "#summary", " mm")
    page.locator("#export").click()
    page.wait_for_selector("#exports a[download$='_cracks.csv']")
    rows = read_crack_csv(_download(page, "_cracks.csv"))
    assert rows == record["geometry"]["cracks"]  # the table is predict --geometry's, row for row
    line = json.loads(_download(page, "predictions.jsonl"))
    assert line["path"] == "sample_photo.jpg"
    assert {k: v for k, v in line.items() if k != "path"} == {k: v for k, v in record.items() if k != "path"}

    _set_number(page, "#threshold input[type=number]", "0.3")
    n_low = _count(_wait_text(page, "#summary", "at map threshold 0.30"), "0.30")
    assert n_low != n_half and _rows(page) == n_low

    _set_number(page, "#threshold input[type=number]", "0.5")
    _wait_text(page, "#summary", "at map threshold 0.50")
    page.locator("#cracks [data-testid='cell-0-1']").click()
    _wait_text(page, "#status", "highlighted")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    header = page.locator("#cracks [data-testid='header-1']")  # length px: sort ascending from its menu
    header.hover()
    header.locator("button[aria-haspopup=menu]").click(force=True)
    page.locator("[role=menu]").get_by_text("Sort ascending").click()
    second = sorted((c["length_px"], c["index"]) for c in record["geometry"]["cracks"])[1][1]
    # the 2nd shortest crack, found by its "#" cell among the rows the virtual list rendered near the
    # top (which of them are in the DOM depends on Gradio's virtualisation and the number of rows)
    _row_with_index(page, second).locator("[role=gridcell]").nth(1).click()
    _wait_text(page, "#status", f"Crack #{second} highlighted")  # sorted by length: the 2nd shortest crack

    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"this is not a photo")
    _upload(page, bad)
    _wait_text(page, "#status", "corrupt.jpg: not a readable image")
    assert page.locator("#summary").inner_text().strip() == ""
    assert "Traceback" not in page.content()

    _upload(page, _png_header_only(tmp_path / "huge.png", 12000, 9000))  # 108 MP claimed in 60 bytes
    _wait_text(page, "#status", "huge.png: image is 12000x9000 = 108 MP, above the limit of 100 MP")

    grey = tmp_path / "grey.jpg"
    Image.open(SAMPLE).convert("L").crop((0, 0, 454, 340)).save(grey)
    _upload(page, grey)
    _wait_text(page, "#status", "grayscale photo", timeout=MAP_TIMEOUT_MS)
    _wait_text(page, "#summary", "grey.jpg")

    _upload(page, SAMPLE)  # the server still serves, and the map comes from the cache
    _wait_text(page, "#status", "sample_photo.jpg: map taken from the cache")
    assert _count(_wait_text(page, "#summary", "sample_photo.jpg"), "0.50") == n_half


def test_folder_gallery_reuses_predicts_outputs(page, site):
    page.get_by_role("tab", name="Folder").click()
    page.locator("#map-folder").click()
    status = _wait_text(page, "#folder-status", "1 of 1 photos done", timeout=MAP_TIMEOUT_MS)
    assert "1 reused" in status and "0 mapped now" in status
    caption = page.locator("#gallery").inner_text()
    assert f"{site['record']['crack_probability']:.3f} · crack · sample_photo.jpg" in caption

    for outside in ["/etc", "..", str(site["root"].parent)]:
        page.locator("#folder textarea, #folder input").first.fill(outside)
        page.locator("#map-folder").click()
        _wait_text(page, "#folder-status", f"{outside}: outside the served folder")

    page.locator("#folder textarea, #folder input").first.fill(str(site["root"]))
    page.locator("#map-folder").click()
    _wait_text(page, "#folder-status", "1 of 1 photos done")
    page.locator("#gallery button.thumbnail-item").first.click()
    _wait_text(page, "#summary", "at map threshold", timeout=MAP_TIMEOUT_MS)  # opened in the photo tab


def test_no_file_outside_the_app_can_be_fetched(site):
    url, root = site["url"], site["root"]
    for path in ["/etc/passwd", str(root / "sample_photo.jpg"), str(REPO / "pyproject.toml"),
                 str(root / "crackloc_maps" / "predictions.jsonl")]:
        for route in ("/gradio_api/file=", "/file="):
            assert _get(url + route + path) in (403, 404), (route, path)
