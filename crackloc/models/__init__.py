"""Models: registry, backbones, MS-RFE fusion, AHR refinement, the proposed net, baselines.

Importing this package (which any `crackloc.models.*` import does first) imports `net` and
`baselines` and `filters` (the training-free floors), whose import registers every model with `crackloc.models.registry`.
"""

from crackloc.models import baselines, filters, net, seg  # noqa: F401  (registers the models)
from crackloc.models.registry import available_models, build_model, register

__all__ = ["available_models", "build_model", "register"]
