"""Validator: COCO mAP of a DetectionModel on a dataset split.

    metrics = Validator({"model": "runs/train/train/weights/best.pt", "data": "coco128.yaml"})()
    metrics["mAP50-95"], metrics["mAP50"]

The model runs in eval mode; ``model.head.postprocess`` turns its output into per-image boxes in
network-input pixels, which are mapped back through the letterbox / resize (``ratio_pad``) to original
pixels and scored with faster-coco-eval against the dataset's own labels (also in original pixels).
Standalone runs write ``predictions.json`` (COCO results) to ``runs/val/<name>``; on a COCO-JSON dataset it
uses that JSON's own image and category ids, so COCO tools score it against the dataset's JSON directly.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rtdet.data import PipelineConfigError
from rtdet.data.formats import coco_ids
from rtdet.engine import loaders
from rtdet.engine.rundir import RunFolder
from rtdet.engine.settings import SettingsError, check_settings, resolve_settings, with_verb_defaults
from rtdet.engine.setup import prepare
from rtdet.io.load import is_checkpoint
from rtdet.nn.model import DetectionModel, InferenceModel
from rtdet.ops.boxes import boxes_to_original, cxcywh_to_xyxy
from rtdet.ops.metrics import COCOEvaluator, coco_predictions, save_predictions_json
from rtdet.utils.logging import LOGGER, set_verbosity
from rtdet.utils.torch_utils import de_parallel

__all__ = ["Validator", "fitness", "image_id_of", "input_spec"]


def input_spec(model: InferenceModel) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the images a model takes (fp16 after ``half()``; an export's own precision)."""
    return model.device, model.input_dtype


def fitness(metrics: dict) -> float | None:
    """What best.pt maximises: 0.1 mAP50 + 0.9 mAP50-95; None when mAP is unavailable (no labels)."""
    m50, m = metrics.get("mAP50"), metrics.get("mAP50-95")
    if m50 is None or m is None:
        return None
    return 0.1 * float(m50) + 0.9 * float(m)


def unavailable_as_none(metrics: dict) -> dict:
    """COCO writes -1 for a metric with nothing to measure (no ground-truth box at all, none that is large,
    ...); here such a metric is None, "unavailable", never a number that could be averaged or compared."""
    return {k: (None if isinstance(v, float) and v == -1.0 else v) for k, v in metrics.items()}


def image_id_of(im_file: str, fallback: int) -> int | str:
    """Image id for predictions.json where the dataset has none of its own (YOLO folders): the file stem, as a
    number when it is one. A COCO-JSON split's images keep the JSON's own ids (Validator._output_ids)."""
    stem = Path(im_file).stem
    return int(stem) if stem.isdigit() else (stem or fallback)


class Validator:
    """Runs a model over a val loader and computes COCO box metrics.

    Standalone: ``Validator(overrides)()`` builds the model and loader from settings, writes
    ``predictions.json`` and prints a per-class table. The trainer calls :meth:`run` with its own EMA
    model and loader every epoch.
    """

    task = "val"

    def __init__(self, overrides: dict | None = None, args: dict | None = None):
        self.overrides = check_settings(overrides, "val")  # bad values stop here, before any work
        self.args = args if args is not None else None
        self.per_class: dict[str, tuple[float, float]] = {}
        self.predictions: list[dict] = []
        self.save_dir: Path | None = None
        self.speed_ms = 0.0
        self.skipped: list[str] = []
        self._ids: tuple | None = None  # (dataset, its output ids): see _output_ids

    # ------------------------------------------------------------------ standalone
    def __call__(self, model: DetectionModel | str | None = None) -> dict:
        user = {k: v for k, v in self.overrides.items() if k != "model"}
        spec = model if model is not None else self.overrides.get("model")
        if spec is None:
            raise SettingsError("val needs model=<checkpoint .pt or model YAML>")
        args = resolve_settings(user, verb=self.task)
        set_verbosity(bool(args["verbose"]))
        if not args.get("data"):
            raise SettingsError("val needs data=<dataset YAML>, e.g. data=coco128.yaml")
        # The run folder is claimed once there is something to put in it, and a failed run leaves none behind.
        with RunFolder(args["project"], self.task, args.get("name"), bool(args["exist_ok"])) as folder:
            metrics, names = self._validate(spec, user, args)
            self.save_dir = folder.path
            save_predictions_json(self.save_dir / "predictions.json", self.predictions)
        self.print_results(metrics, names)
        LOGGER.info(f"Results saved to {self.save_dir}")
        return metrics

    def _validate(self, spec, user: dict, args: dict) -> tuple[dict, list[str]]:
        """Load the data and the model, settle the settings, run the loop: (metrics, class names)."""
        data = loaders.load_data(args["data"])
        from_yaml = isinstance(spec, str | Path) and not is_checkpoint(spec)

        def same_classes(model) -> None:
            if model.nc != len(data.names):
                raise SettingsError(f"the model predicts {model.nc} classes but {args['data']} names "
                                    f"{len(data.names)}; validate on the dataset it was trained for")

        # default < recipe < the checkpoint's training size and transforms < user
        ready = prepare(spec, user, self.task, nc=len(data.names) if from_yaml else None,
                        names=data.names if from_yaml else None, scale=args.get("scale"), check=same_classes)
        self.args = args = ready.args
        model = ready.model.to(ready.device)
        if args["half"]:
            model = model.half()
        loader = loaders.val_loader(data, args, int(args["batch"]))
        return self.run(model, loader), data.names

    # ------------------------------------------------------------------ the loop
    @torch.no_grad()
    def run(self, model: InferenceModel, loader, save_dir: Path | None = None) -> dict:
        """COCO metrics of ``model`` on ``loader``; writes predictions.json to ``save_dir`` when given."""
        # The trainer's settings leave conf / multi_label empty: here they take val's defaults.
        args = with_verb_defaults(dict(self.args or resolve_settings({})), "val")
        model = de_parallel(model)
        was_training = model.training
        model.eval()
        device, dtype = input_spec(model)
        conf, iou, max_det = float(args["conf"]), float(args["iou"]), int(args["max_det"])
        multi_label = bool(args["multi_label"])  # val's default: every class above conf, as COCO val does
        dataset = loader.dataset
        names = [model.names.get(k, str(k)) for k in range(model.nc)]
        evaluator = COCOEvaluator(model.nc, names)
        index_of = {f: i for i, f in enumerate(getattr(dataset, "im_files", []))}
        image_ids, category_ids = self._output_ids(dataset)
        predictions: list[dict] = []
        skipped: list[str] = []
        seconds, n_images = 0.0, 0
        pbar = tqdm(loader, desc="val", leave=False, disable=not args.get("verbose", True), dynamic_ncols=True)
        for batch in pbar:
            img = batch["img"].to(device, non_blocking=device.type == "cuda")
            img = img.to(dtype)  # fp16 when the model was converted with half=true
            t0 = time.perf_counter()
            out = model(img)
            dets = model.head.postprocess(out, tuple(img.shape[2:]), conf=conf, iou=iou, max_det=max_det,
                                          multi_label=multi_label)
            seconds += time.perf_counter() - t0
            n_images += img.shape[0]
            unreadable = batch.get("unreadable") or [False] * len(dets)
            for j, det in enumerate(dets):
                im_file, ori_shape = batch["im_file"][j], tuple(batch["ori_shape"][j])
                if unreadable[j]:  # never scored in another image's place, never twice
                    skipped.append(im_file)
                    continue
                ratio_pad = batch["ratio_pad"][j]
                if ratio_pad is None:
                    raise PipelineConfigError(
                        f"{im_file}: the val transforms lost the mapping to original pixels (ratio_pad is None); "
                        f"use a val pipeline of LetterBox / Resize only"
                    )
                boxes = boxes_to_original(det.boxes.float().cpu(), ratio_pad, ori_shape)
                gt_cls, gt_boxes = self._ground_truth(dataset, index_of, batch, j, ori_shape)
                evaluator.add(gt_boxes, gt_cls, boxes, det.scores.float().cpu(), det.labels.cpu(), shape=ori_shape)
                image_id = image_ids[im_file] if im_file in image_ids else image_id_of(im_file, len(evaluator))
                predictions += coco_predictions(image_id, boxes, det.scores.float().cpu(), det.labels.cpu(),
                                                class_map=category_ids)
        model.train(was_training)
        if skipped:
            LOGGER.warning(f"val: {len(skipped)} image(s) could not be decoded and are left out of the metrics: "
                           f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")
        self.skipped = skipped
        metrics = evaluator.compute()
        self.per_class = metrics.per_class(names)
        self.predictions = predictions
        self.speed_ms = 1000 * seconds / max(n_images, 1)
        if save_dir is not None:
            save_predictions_json(Path(save_dir) / "predictions.json", predictions)
        return unavailable_as_none(metrics.as_dict())

    def _output_ids(self, dataset) -> tuple[dict, list | None]:
        """The image and category ids predictions.json uses: a COCO-JSON split's own (so that COCO tools
        score the file against that JSON), else the file stem and the class index. Read once per dataset."""
        config, split = getattr(dataset, "config", None), getattr(dataset, "split", None)
        if config is None or split is None:
            return {}, None
        if self._ids is None or self._ids[0] is not dataset:
            self._ids = (dataset, coco_ids(config.splits.get(split, [])))
        return self._ids[1]

    @staticmethod
    def _ground_truth(dataset, index_of: dict, batch: dict, j: int, ori_shape: tuple[int, int]):
        """Image j's labels in original pixels: the dataset's own (exact), else mapped back from the batch."""
        i = index_of.get(batch["im_file"][j])
        if i is not None and hasattr(dataset, "ground_truth"):
            cls_, boxes = dataset.ground_truth(i)
            return cls_, boxes
        sel = batch["batch_idx"] == j
        h, w = batch["img"].shape[2:]
        xyxy = cxcywh_to_xyxy(batch["bboxes"][sel].cpu()) * torch.tensor([w, h, w, h])
        return batch["cls"][sel].cpu().numpy(), np.asarray(boxes_to_original(xyxy, batch["ratio_pad"][j], ori_shape))

    # ------------------------------------------------------------------ report
    def print_results(self, metrics: dict, names: list[str]) -> None:
        if metrics.get("mAP50-95") is None:
            LOGGER.warning("val: the split has no labelled box, so mAP is unavailable (predictions were still made)")
        LOGGER.info(f"{'class':>20}{'AP50-95':>10}{'AP50':>10}")
        LOGGER.info(f"{'all':>20}{_fmt(metrics.get('mAP50-95')):>10}{_fmt(metrics.get('mAP50')):>10}")
        for name, (ap, ap50) in self.per_class.items():
            LOGGER.info(f"{name:>20}{_fmt(ap):>10}{_fmt(ap50):>10}")
        extra = ", ".join(f"{k} {_fmt(metrics.get(k))}" for k in ("mAP75", "mAP_small", "mAP_medium", "mAP_large"))
        LOGGER.info(f"{extra}; {self.speed_ms:.1f} ms/image (model + postprocess)")
        # The summary line training prints after each epoch, which users grep for.
        LOGGER.info(f"val: mAP50-95 {_fmt(metrics.get('mAP50-95'))}  mAP50 {_fmt(metrics.get('mAP50'))}")


def _fmt(v) -> str:
    """A metric for the table: 4 decimals, or n/a when unavailable (None, or NaN for a class without boxes)."""
    return "n/a" if v is None or v != v else f"{v:.4f}"
