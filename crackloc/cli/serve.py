"""`crackloc serve`: the inspection viewer in the browser (Gradio; crackloc.viewer)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Callable
from pathlib import Path

from crackloc.cli.registry import add_inference_options, command, inference_config

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def _ranged_int(option: str, lo: int, hi: int, unit: str) -> Callable[[str], int]:
    """An argparse `type`: an integer in [lo, hi] (marked checked, like the config-backed options)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{option}={value} is outside [{lo}, {hi}] {unit}")
        return value
    parse.__name__ = "int"
    parse.checked = True  # type: ignore[attr-defined]
    return parse


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: only this machine can connect."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@command("serve", "inspection viewer in the browser: upload photos or open a folder, re-threshold, export")
def _serve_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the "
                        "network, with no login)")
    p.add_argument("--port", type=_ranged_int("--port", 1, 65535, "(TCP port)"), default=7860,
                   help="TCP port (default 7860)")
    p.add_argument("--folder", help="folder of photos the page may open (and nothing outside it)")
    p.add_argument("--out", help="where the folder's maps go, or where `crackloc predict --out` left them "
                                 "(default FOLDER/crackloc_maps)")
    p.add_argument("--max-upload-mb", type=_ranged_int("--max-upload-mb", 1, 4096, "MB"), default=200,
                   help="largest upload accepted (default 200 MB)")
    p.add_argument("--max-pixels", type=int, default=100_000_000,
                   help="refuse photos above this many pixels (default 100 MP)")
    add_inference_options(p)
    p.set_defaults(func=_run_serve)


def _run_serve(a: argparse.Namespace) -> int:
    from crackloc.errors import CracklocError

    folder = Path(a.folder).expanduser() if a.folder else None
    if folder is not None and not folder.is_dir():
        raise CracklocError(f"{folder}: no such folder")
    out = Path(a.out).expanduser() if a.out else None
    if out is not None and folder is None:
        raise CracklocError("--out is the output folder of --folder: give --folder too")
    if out is not None and out.exists() and not out.is_dir():
        raise CracklocError(f"{out}: not a folder")
    import importlib.util

    missing = [m for m in ("gradio", "cachetools") if importlib.util.find_spec(m) is None]
    if missing:  # an optional extra: checked before the model loads
        raise CracklocError(f"crackloc serve needs {' and '.join(missing)}: pip install 'crackloc[viewer]'")
    if not is_loopback(a.host):
        print(f"crackloc serve: warning: listening on {a.host}: anyone who can reach this machine on port "
              f"{a.port} can upload photos and see every photo under --folder; there is no login. Prefer "
              "ssh port forwarding (ssh -L 7860:127.0.0.1:7860 SERVER).", file=sys.stderr)
    from crackloc.viewer.mapper import PhotoMapper

    mapper = PhotoMapper(a.checkpoint, inference_config(a), cache_dir=a.cache_dir, max_pixels=a.max_pixels)
    from crackloc.viewer.app import serve

    print(f"crackloc serve: model {mapper.checkpoint} · open http://{_url_host(a.host)}:{a.port} "
          "(Ctrl-C to stop)", file=sys.stderr)
    serve(mapper, host=a.host, port=a.port, folder=folder, out=out, max_upload_mb=a.max_upload_mb)
    return 0


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
