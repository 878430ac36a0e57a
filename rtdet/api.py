"""Python API: one object to build or load a detector, train it, validate it and predict with it.

    from rtdet import Detector

    det = Detector("rtdetr-l.yaml")                    # build from a model YAML (built-in name or path)
    det.info()                                         # layers, parameters, GFLOPs
    det.train(data="coco128.yaml", epochs=10, imgsz=640)
    det = Detector("runs/train/train/weights/best.pt")  # reload trained weights
    det = Detector("rtdetr-l.pt")                      # an Ultralytics checkpoint, converted in memory
    metrics = det.val(data="coco128.yaml")             # {"mAP50-95": ..., "mAP50": ..., ...}
    for r in det.predict("images/", conf=0.3):          # list[Results]
        print(r.path, r.boxes, r.scores, r.labels)
    for r in det.track("clip.mp4", tracker="bytetrack"):  # one Results per frame, r.ids = track ids
        print(r.frame, r.ids, r.boxes)
    onnx = det.export(dynamic=True)                    # runs/export/<name>/<model>.onnx, checked in ONNX Runtime
    Detector(onnx).val(data="coco128.yaml")            # the same metrics through ONNX Runtime

Keyword arguments are the settings of ``rtdet/cfg/default.yaml`` (plus the family recipe's keys).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rtdet.engine.exporter import Exporter
from rtdet.engine.predictor import Predictor
from rtdet.engine.results import Results
from rtdet.engine.settings import check_settings, check_stored_settings
from rtdet.engine.setup import load_inference_model
from rtdet.engine.tracker import Tracker
from rtdet.engine.trainer import Trainer
from rtdet.engine.validator import Validator
from rtdet.io.load import INHERITED_KEYS, LoadedModel
from rtdet.nn.builder import ModelConfigError
from rtdet.nn.model import DetectionModel

__all__ = ["Detector"]


class Detector:
    """A DetectionModel with train / val / predict / info.

    Args:
        model: a model YAML (``rtdetr-l.yaml`` or a path), an rtdet checkpoint (``best.pt``), a foreign
            checkpoint rtdet converts (Ultralytics ``rtdetr-l.pt``, see ``docs/checkpoints.md``), or a
            DetectionModel.
        nc: number of classes when building from a YAML (training re-sizes the head to the data anyway).
        scale: scale letter for multi-scale YAMLs.
    """

    def __init__(self, model: str | Path | DetectionModel = "rtdetr-l.yaml", nc: int | None = None,
                 scale: str | None = None):
        if isinstance(model, bool) or not isinstance(model, str | Path | DetectionModel) or str(model) == "":
            raise TypeError(f"Detector(model): expected a model YAML (e.g. 'rtdetr-l.yaml'), a checkpoint path or a "
                            f"DetectionModel; got {type(model).__name__} {model!r}")
        checked = check_settings({"nc": nc, "scale": scale})  # before anything is built
        nc, scale = checked["nc"], checked["scale"]
        self.source = model if not isinstance(model, DetectionModel) else None
        self._use(load_inference_model(model, nc=nc, scale=scale))
        self.trainer = None
        self.metrics: dict = {}

    def __repr__(self) -> str:
        return f"Detector({self.model.name}, nc={self.model.nc}, family={self.model.head.family})"

    @property
    def names(self) -> dict[int, str]:
        return self.model.names

    def info(self, imgsz: int = 640, verbose: bool = True) -> str:
        """The model's per-row table and '<name> summary: L layers, P parameters, G GFLOPs' (printed, returned)."""
        return self.model.info(imgsz=imgsz, verbose=verbose)

    def train(self, **overrides) -> dict:
        """Train on ``data=...``; afterwards ``self.model`` holds the best weights. Returns the last metrics.

        ``resume=True`` / ``resume="path/to/last.pt"`` continues an interrupted run instead."""
        resume = overrides.get("resume")
        self.trainer = Trainer(overrides, model=None if resume else self.model,
                               weights_loaded=self.checkpoint is not None)
        self.metrics = self.trainer.train()
        if self.trainer.save_dir is not None:
            weights = self.trainer.best if self.trainer.best.is_file() else self.trainer.last
            if weights.is_file():
                self._use(load_inference_model(weights))
        return self.metrics

    def val(self, **overrides) -> dict:
        """COCO metrics on the val split of ``data=...`` ({"mAP50-95", "mAP50", "mAP75", ...})."""
        validator = Validator(self._with_inherited(overrides))
        self.metrics = validator(self.model)
        self.validator = validator
        return self.metrics

    def predict(self, source, stream: bool = False, **overrides) -> list[Results] | Iterator[Results]:
        """Detections for an image path, folder, glob, video, numpy array (HWC BGR) or a list of them.

        ``save=True`` writes annotated pictures to runs/predict/<name> (off by default here, on in the CLI);
        ``stream=True`` returns a generator (one Results at a time, for long videos)."""
        overrides.setdefault("save", False)
        predictor = Predictor(self._with_inherited(overrides), model=self.model)
        self.predictor = predictor
        return predictor.stream(source) if stream else predictor(source)

    def track(self, source, **overrides) -> Iterator[Results]:
        """Per-frame detections linked into tracks (``Results.ids``), frame after frame, for a video, stream,
        webcam or image sequence; ``tracker="bytetrack" | "sort" | "ocsort"`` (needs ``pip install
        rtdet[track]``). ``save=True`` writes the annotated video and MOT files to runs/track/<name>."""
        overrides.setdefault("save", False)
        tracker = Tracker(self._with_inherited(overrides), model=self.model)
        self.tracker = tracker
        return tracker.stream(source)

    def export(self, **overrides) -> Path:
        """ONNX export of the deploy form, checked against ONNX Runtime; returns the file's path.

        Keyword arguments are the export settings (``imgsz``, ``batch``, ``dynamic``, ``half``, ``opset``,
        ``nms``, ``simplify``, ``project``, ``name``, ...); see docs/deploy.md."""
        exporter = Exporter(self._with_inherited(overrides))
        self.exporter = exporter
        return exporter(self.model)

    def _use(self, loaded: LoadedModel) -> None:
        """Hold a loaded model: its weights, the file they came from, the training settings it carries."""
        if loaded.model.head_index is None:
            raise ModelConfigError(f"{loaded.source}: the model has no detection head ({loaded.description}); a "
                                   f"backbone checkpoint is used through a YAML row's weights=, docs/checkpoints.md")
        self.loaded = loaded
        self.model, self._inherited = loaded.model, loaded.inherited
        self.checkpoint = loaded.path

    def _with_inherited(self, overrides: dict) -> dict:
        """The training input size / transforms of a loaded checkpoint, unless given."""
        stored = check_stored_settings({k: v for k, v in self._inherited.items() if k in INHERITED_KEYS},
                                       self.loaded.path or self.loaded.source, overrides)  # as the command line's
        return {**stored, **overrides}
