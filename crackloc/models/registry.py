"""A small model registry: `@register("name")` on a builder, `build_model(cfg)` to make one.

This module imports nothing from `crackloc.models`; the package's `__init__` imports the
modules whose import registers models, so any import under `crackloc.models` fills the registry.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from crackloc.config import ModelConfig
from crackloc.errors import CracklocError

MODELS: dict[str, Callable[[ModelConfig], nn.Module]] = {}


def register(name: str) -> Callable:
    """Decorator that registers a builder `fn(cfg: ModelConfig) -> LocalizationModel`."""

    def deco(fn: Callable[[ModelConfig], nn.Module]) -> Callable[[ModelConfig], nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = fn
        return fn

    return deco


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the registered model `cfg.name` from its config."""
    if cfg.name not in MODELS:
        raise CracklocError(f"unknown model {cfg.name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[cfg.name](cfg)
