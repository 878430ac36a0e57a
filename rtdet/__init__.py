"""rtdet: a pure-PyTorch toolkit for real-time object detection (RT-DETR, YOLOv9, RTMDet)."""

__version__ = "0.1.0"

from rtdet.api import Detector  # noqa: E402
from rtdet.io.transplant import transplant  # noqa: E402
from rtdet.nn import DetectionModel, ModelConfigError, build_model, register  # noqa: E402

__all__ = ["DetectionModel", "Detector", "ModelConfigError", "__version__", "build_model", "register", "transplant"]
