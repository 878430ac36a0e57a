"""Sample predictions of a trained model: the first validation images with its boxes drawn, one picture.

    save_sample_predictions(trainer)   # -> runs/train/<name>/val_predictions.jpg (or None without val data)

What a user looks at first after training, and what the experiment loggers show beside the curves.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from rtdet.engine.settings import verb_defaults
from rtdet.utils.checkpoint import atomic_write_bytes
from rtdet.utils.plotting import draw_detections
from rtdet.utils.torch_utils import de_parallel

__all__ = ["save_sample_predictions", "tile"]

@torch.no_grad()
def save_sample_predictions(trainer, n: int = 4, name: str = "val_predictions.jpg") -> Path | None:
    """Draw the final model's (EMA when used) detections on the first ``n`` images of the validation
    loader, tiled in a grid, into the run folder; None when there is no validation loader."""
    loader = getattr(trainer, "val_loader", None)
    if loader is None:
        return None
    model = trainer.ema.model if getattr(trainer, "ema", None) is not None else de_parallel(trainer.model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batch = next(iter(loader))
    img = batch["img"][:n].to(device)
    args = trainer.args
    conf = verb_defaults("predict")["conf"]  # the boxes a user would be shown, not val's 0.001
    dets = model.head.postprocess(model(img), tuple(img.shape[2:]), conf=conf, iou=float(args["iou"]),
                                  max_det=int(args["max_det"]))
    model.train(was_training)
    names = dict(getattr(model, "names", {}) or {})
    pictures = []
    for image, det in zip(img, dets, strict=True):
        bgr = np.ascontiguousarray((image.float().cpu().permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round()
                                   .clip(0, 255).astype(np.uint8))
        pictures.append(draw_detections(bgr, det.boxes.float().cpu().numpy(), det.scores.float().cpu().numpy(),
                                        det.labels.cpu().numpy(), names))
    path = Path(trainer.save_dir) / name
    ok, data = cv2.imencode(path.suffix, tile(pictures))
    if not ok:
        raise OSError(f"{path}: the image could not be encoded")
    atomic_write_bytes(path, data.tobytes())
    return path


def tile(images: list[np.ndarray]) -> np.ndarray:
    """Equal-sized HxWx3 images in a near-square grid (empty cells black)."""
    cols = int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / cols))
    h, w = images[0].shape[:2]
    grid = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    return grid
