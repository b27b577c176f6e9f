"""Table I baselines, each registered under its name: importing this package registers them all."""

from crackloc.models.baselines import cam_vgg16, psol, ts_cam, wsol_crack

__all__ = ["cam_vgg16", "psol", "ts_cam", "wsol_crack"]
