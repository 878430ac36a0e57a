"""Tracking quality on a synthetic clip of moving shapes with known identities (docs/benchmarks.md, "Tracking").

    python benchmarks/tracking.py --weights runs/demo/train/weights/best.pt          # a demo-trained model
    python benchmarks/tracking.py --weights best.pt --frames 300 --objects 8 --out runs/bench-tracking

The clip (rtdet/data/synthetic_tracks.py: the demo's shapes moving at constant speed, bouncing off the borders,
crossing and occluding each other) is written with its MOT ground truth. The model detects every frame once;
each tracker (ByteTrack, SORT, OC-SORT of the `trackers` package) links those detections, and the package's
own evaluation (TrackEval's matching and metrics) gives HOTA, MOTA, IDF1 and ID switches. An "oracle" row per
tracker feeds it the ground-truth boxes with 1.5 px noise instead: what the tracker does with a near-perfect
detector, so the two rows separate detection errors from association errors.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from rtdet.data.synthetic_tracks import render_track_clip, write_mot, write_video
from rtdet.engine.predictor import Predictor
from rtdet.engine.results import Results
from rtdet.engine.settings import verb_defaults
from rtdet.engine.tracker import TRACKERS, make_tracker, mot_rows, track_frame


def detect(weights: str, clip: Path, conf: float) -> tuple[list[Results], float]:
    """The model's detections on every frame of the clip, and the frames per second of detection."""
    predictor = Predictor({"save": False, "verbose": False, "conf": conf, "batch": 1}, model=weights)
    t0 = time.perf_counter()
    results = list(predictor.stream(str(clip)))
    return results, len(results) / (time.perf_counter() - t0)


def oracle(frames: list[np.ndarray], gt: np.ndarray, seed: int) -> list[Results]:
    """Ground-truth boxes with 1.5 px Gaussian noise and score 0.9, as if from a near-perfect detector."""
    g = np.random.default_rng(seed)
    out = []
    for t, img in enumerate(frames, 1):
        here = gt[gt[:, 0] == t]
        boxes = torch.tensor(here[:, 3:7] + g.normal(0, 1.5, (len(here), 4)), dtype=torch.float32)
        out.append(Results(img, "oracle", boxes, torch.full((len(here),), 0.9), torch.tensor(here[:, 2]).long(), {},
                           t - 1))
    return out


def evaluate(results: list[Results], name: str, fps: float, gt_path: Path, out: Path) -> dict:
    """Track, write the MOT file, score it with the trackers package's evaluation."""
    from trackers.eval import evaluate_mot_sequence

    tracker, rows = make_tracker(name, fps), []
    t0 = time.perf_counter()
    for t, r in enumerate(results, 1):
        rows += mot_rows(track_frame(tracker, r), t)
    ms = 1000 * (time.perf_counter() - t0) / max(len(results), 1)
    out.write_text("".join(f"{row}\n" for row in rows))
    if not rows:  # the package refuses an empty file; nothing tracked misses every box
        n_gt = sum(1 for _ in gt_path.open())
        return {"HOTA": 0.0, "MOTA": 0.0, "IDF1": 0.0, "IDSW": 0, "FP": 0, "FN": n_gt, "ms": ms}
    m = evaluate_mot_sequence(gt_path, out, metrics=["CLEAR", "HOTA", "Identity"])
    return {"HOTA": m.HOTA.HOTA, "MOTA": m.CLEAR.MOTA, "IDF1": m.Identity.IDF1, "IDSW": int(m.CLEAR.IDSW),
            "FP": int(m.CLEAR.CLR_FP), "FN": int(m.CLEAR.CLR_FN), "ms": ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="a detector trained on the demo shapes (rtdet demo)")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--objects", type=int, default=6)
    ap.add_argument("--imgsz", type=int, default=256, help="clip side in pixels")
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--conf", type=float, default=verb_defaults("track")["conf"])
    ap.add_argument("--out", default="runs/bench-tracking")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames, gt = render_track_clip(args.frames, args.objects, args.imgsz, args.seed)
    clip, gt_path = write_video(out / "clip.avi", frames, args.fps), write_mot(out / "gt.txt", gt)
    detected, det_fps = detect(args.weights, clip, args.conf)
    print(f"clip: {args.frames} frames, {args.objects} objects, {args.imgsz} px, {len(gt)} boxes; "
          f"detector {args.weights}: {det_fps:.1f} frames/s (conf {args.conf})\n")
    print("| detections | tracker | HOTA | MOTA | IDF1 | ID switches | FP | FN | tracker ms/frame |")
    print("|---|---|---|---|---|---|---|---|---|")
    for source, results in (("model", detected), ("oracle (GT + 1.5 px noise)", oracle(frames, gt, args.seed))):
        for name in TRACKERS:
            m = evaluate(results, name, args.fps, gt_path, out / f"{name}-{source.split()[0]}.txt")
            print(f"| {source} | {name} | {m['HOTA']:.3f} | {m['MOTA']:.3f} | {m['IDF1']:.3f} | {m['IDSW']} | "
                  f"{m['FP']} | {m['FN']} | {m['ms']:.2f} |")


if __name__ == "__main__":
    main()
