"""The one pretrained-weight loader: resolve a file, read it safely, map its keys, check, load.

Every model part that starts from published weights (the backbones of the table in
`crackloc.models.backbone`, CAM's VGG-16 body, TS-CAM's DeiT) calls `load_weights`, so the
'auto' / 'none' / PATH rules and the one-line errors naming the file are the same for all.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from crackloc.errors import CracklocError

StateDict = dict[str, torch.Tensor]
KeyMap = Callable[[StateDict], StateDict]


def hub_checkpoint(filename: str) -> Path:
    """Path of `filename` in the torch hub cache (`$TORCH_HOME/hub/checkpoints`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def resolve_weights(pretrained: str, candidates: list[Path], what: str) -> Path | None:
    """The weights file `pretrained` names: None for 'none' (or 'auto' with nothing cached).

    'auto' takes the first existing file of `candidates` and warns when there is none; an
    explicit path that does not exist is an error.
    """
    if pretrained == "none":
        return None
    if pretrained == "auto":
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            warnings.warn(f"no cached ImageNet weights for {what}; starting from random init "
                          "(pass --pretrained PATH to use a weights file)", stacklevel=4)
        return path
    path = Path(pretrained)
    if not path.is_file():
        raise CracklocError(f"{path}: pretrained weights file not found")
    return path


def read_state_dict(path: Path) -> StateDict:
    """Load a weights file safely (tensors only); unwraps a {'state_dict': ...} payload."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CracklocError(f"{path}: not a readable weights file ({type(exc).__name__})") from None
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict):
        raise CracklocError(f"{path}: not a state dict (a {type(sd).__name__})")
    return {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def load_weights(module: nn.Module, pretrained: str, *, candidates: list[Path], what: str,
                 key_map: KeyMap | None = None, prefix: str = "") -> str:
    """Load a weights file into `module`; returns where they came from ('none' if random).

    Args:
        module: the module whose `state_dict` the file must fill.
        pretrained: 'none', 'auto' (first existing file of `candidates`, else a warning and
            random init) or a path (an error if it is missing or does not fit).
        candidates: files 'auto' looks for, in order.
        what: the module's name in warnings and errors ("the resnet18 backbone", "VGG-16").
        key_map: maps the file's keys to `module`'s (keys already in `module`'s layout are
            kept as they are, so a file saved from `module` itself loads too).
        prefix: keep only the file's keys under `prefix` (stripped), e.g. "features.".

    Raises:
        CracklocError: one line naming the file when it is unreadable or lacks any tensor
            of `module` (missing, or of another shape); `num_batches_tracked` may be absent.
    """
    path = resolve_weights(pretrained, candidates, what)
    if path is None:
        return "none"
    sd = read_state_dict(path)
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if key_map is not None:
        sd = {**sd, **key_map(sd)}
    own = module.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    if not usable or missing:
        raise CracklocError(f"{path}: does not match {what} "
                            f"({len(missing)} of {len(own)} tensors missing or of another shape)")
    module.load_state_dict(usable, strict=False)
    return str(path)
