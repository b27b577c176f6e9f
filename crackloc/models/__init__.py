"""Models: registry, backbones, MS-RFE fusion, AHR refinement, the proposed net, baselines."""

from crackloc.models.registry import available_models, build_model, register

__all__ = ["available_models", "build_model", "register"]
