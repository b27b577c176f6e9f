"""crackloc: weakly supervised concrete crack localization."""

__version__ = "0.1.0"
