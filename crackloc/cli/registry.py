"""The subcommand registry and the option helpers every command shares.

A command module registers `fn(parser)` with `@command(name, help)`; `crackloc.cli.main`
imports the command modules and builds one sub-parser each. Choices and numeric checks come
from the typed configs (`crackloc.config`), so a flag and its config field cannot disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable
from typing import Any

from crackloc.config import RANGES, InferenceConfig, check_value, choices_of, from_dict

COMMANDS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def command(name: str, help_text: str) -> Callable:
    """Register `fn(parser)` that adds a subcommand's arguments and sets `func`."""
    def deco(fn: Callable[[argparse.ArgumentParser], None]) -> Callable:
        fn.help_text = help_text  # type: ignore[attr-defined]
        COMMANDS[name] = fn
        return fn
    return deco


def report_failures(failures: list[tuple[str, str]], *, noun: str, listed_in: str) -> int:
    """Print each failed input as `failed: PATH: REASON`, then a count, to stderr: → exit code 0/1."""
    for path, why in failures:
        print(f"  failed: {path}: {why}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} {noun}(s) failed (listed in {listed_in})", file=sys.stderr)
    return 1 if failures else 0


def checked(key: str, option: str, kind: type = float) -> Callable[[str], Any]:
    """An argparse `type` that parses `kind` and refuses non-finite / out-of-range values of field `key`."""
    def parse(text: str) -> Any:
        from crackloc.errors import CracklocError

        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") \
                from None
        try:
            return check_value(key, value, option=option)
        except CracklocError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    parse.checked = True  # type: ignore[attr-defined]
    return parse


def check_numeric_options(parser: argparse.ArgumentParser) -> None:
    """Give every numeric option of `parser` the range check of its field (`crackloc.config.RANGES`).

    An option added with plain `type=int` / `type=float` is wrapped here, so no numeric option
    can skip validation; one without a known range is a programming error (raises ValueError).
    """
    for action in parser._actions:
        kind = action.type
        if getattr(kind, "checked", False) or kind not in (int, float):
            continue
        key = action.dest.rsplit(".", 1)[-1]
        if key not in RANGES:
            raise ValueError(f"option {action.option_strings} has no range in crackloc.config.RANGES")
        action.type = checked(key, action.option_strings[0] if action.option_strings else key, kind)


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line usage errors: `crackloc CMD: error: ... (see crackloc CMD --help)`."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


INFERENCE_HELP: dict[str, str] = {
    "tile": "window size in model pixels (default {d})",
    "overlap": "window overlap fraction (default {d})",
    "scale": "resize the photo by this factor before tiling (cracks should look as wide as in the 227 px "
             "training patches; default {d})",
    "auto_scale": "choose --scale per photo so its cracks look as wide as in the training patches (their "
                  "width is estimated from the photo; see docs/localization.md)",
    "gate": "weight each window's map by its crack probability (default on: it raised PxAP on "
            "CrackForest's dev images for every model and scale ≥ 2 we tried)",
    "views": "average the maps of this many turned or mirrored copies of the photo, each turned back "
             "(default {d}; N x the model time): 2 = + the photo turned 180°, which cancels the 3-8 px shift "
             "of stage-1 maps (the paper's model); 4 = + both mirrors; 8 = + the 4 transposes. Stage 2 needs "
             "none to register; 8 raised its PxAP on CrackForest's dev images",
    "scale_spread": "also map the photo at --scale ÷ and × this factor and average the three maps (default "
                    "{d}: one scale; about 3.4x the model time at 1.33)",
    "line_guide": "guide the map onto the photo's own dark-line pixels: map^(1-g) x (ridge filter)^g, the crack "
                  "mask (map >= 0.5, where widths are measured) kept as the model drew it (default {d}, chosen on "
                  "CrackForest's dev images; 0 = the model's map as it is)",
    "ahr_percentile": "AHR keeps map values above this per-window percentile (default {d}, chosen on "
                      "CrackForest dev images; the paper and training use 90)",
    "batch_size": "windows per forward pass (bounds memory; default {d})",
    "backend": "torch or ONNX Runtime (exports are cached under $CRACKLOC_CACHE or --cache-dir)",
    "compile": "torch.compile the model (~20 s once, then ~1.25x faster; for big batches of images)",
    "precision": "auto (default): bf16 autocast + channels_last where this CPU/GPU runs bf16 natively (~2x "
                 "faster), else fp32; bf16 forces it (10-30x slower where it is emulated); 32 forces fp32",
}


def add_scale_options(p: argparse.ArgumentParser, *, photo: str) -> None:
    """--mm-per-px and --marker: millimetres for the geometry of `photo` ("each photo", "BEFORE")."""
    p.add_argument("--mm-per-px", type=float, help=f"the scale of {photo}, to report lengths and widths in mm too")
    p.add_argument("--marker", metavar="aruco:DICT:SIDE_MM",
                   help=f"a printed ArUco marker in {photo} (e.g. aruco:4x4_50:50 = DICT_4X4_50, 50 mm side): "
                        "lengths and widths in mm on the surface plane it rectifies, right across a tilted photo; "
                        "where it is not found, that is reported and the cracks are measured in px only")


def check_scale_options(a: argparse.Namespace) -> None:
    """Refuse a non-positive --mm-per-px, a malformed --marker, or both at once (one line)."""
    from crackloc.errors import CracklocError

    if a.mm_per_px is not None and a.mm_per_px <= 0:
        raise CracklocError("--mm-per-px must be positive")
    if a.marker is not None:
        from crackloc.imageops.marker import parse_marker

        if a.mm_per_px is not None:
            raise CracklocError("--marker measures the scale in the photo; give it or --mm-per-px, not both")
        parse_marker(a.marker)


def add_inference_options(p: argparse.ArgumentParser, **defaults: Any) -> None:
    """--checkpoint and one flag per `InferenceConfig` field (choices and ranges from the config)."""
    p.add_argument("--checkpoint", help="model file (default: the model bundled with crackloc)")
    p.add_argument("--cache-dir", help="folder for cached ONNX exports (default $CRACKLOC_CACHE or "
                                       "~/.cache/crackloc)")
    g = p.add_argument_group("inference (tiled: any image size)")
    base = dataclasses.replace(InferenceConfig(), **defaults)
    for f in dataclasses.fields(InferenceConfig):
        if f.name not in INFERENCE_HELP:
            continue
        flag, default = "--" + f.name.replace("_", "-"), getattr(base, f.name)
        text = INFERENCE_HELP[f.name].format(d=f"{default:g}" if isinstance(default, float) else default)
        kw: dict[str, Any] = {"dest": f"inference.{f.name}", "default": default, "help": text}
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction if default else "store_true"
        elif choices_of(InferenceConfig, f.name):
            kw["choices"] = list(choices_of(InferenceConfig, f.name))
        else:
            kw["type"] = checked(f.name, flag, int if isinstance(default, int) else float)
        g.add_argument(flag, **kw)


def inference_config(a: argparse.Namespace) -> InferenceConfig:
    """The `InferenceConfig` the inference flags describe (validated)."""
    values = {k.split(".", 1)[1]: v for k, v in vars(a).items() if k.startswith("inference.")}
    return from_dict(InferenceConfig, values)
