"""Pictures: detections drawn on images (OpenCV) and training curves from results.csv (matplotlib, Agg).

Figures are made with matplotlib's object API (a ``Figure`` on its own Agg canvas), not pyplot: nothing here
selects or switches the process-wide backend, so importing or calling this module leaves a notebook's or a
GUI's matplotlib as it was, and no figure has to be closed afterwards.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rtdet.utils.checkpoint import atomic_write_bytes

__all__ = ["class_color", "draw_detections", "plot_curves", "plot_pareto", "plot_results"]

# A 20-colour palette (BGR); class i gets colour i mod 20.
_PALETTE = [
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
    (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
    (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203),
    (200, 149, 255), (199, 55, 255),
]


def class_color(label: int) -> tuple[int, int, int]:
    return _PALETTE[int(label) % len(_PALETTE)]


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray | None, labels: np.ndarray,
                    names: dict[int, str] | None = None, line_width: int | None = None) -> np.ndarray:
    """A copy of a BGR uint8 image with xyxy pixel boxes, class names and scores drawn on it."""
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    lw = int(line_width or max(round((h + w) / 2 * 0.003), 2))
    font_scale = max(lw / 3, 0.35)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    for i, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        color = class_color(int(label))
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
        text = (names or {}).get(int(label), str(int(label)))
        if scores is not None:
            text = f"{text} {float(scores[i]):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, max(lw - 1, 1))
        above = y1 - th - base - 2 >= 0  # label inside the box when there is no room above it
        ty1 = y1 - th - base - 2 if above else y1
        cv2.rectangle(out, (x1, ty1), (x1 + tw + 2, ty1 + th + base + 2), color, -1, cv2.LINE_AA)
        cv2.putText(out, text, (x1 + 1, ty1 + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255),
                    max(lw - 1, 1), cv2.LINE_AA)
    return out


def plot_results(csv_path: str | Path, out_path: str | Path | None = None) -> Path:
    """One small panel per column of results.csv (losses, metrics, learning rates) against the epoch."""
    csv_path = Path(csv_path)
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{csv_path}: no rows to plot")
    columns = [c for c in rows[0] if c != "epoch"]
    epochs = [float(r["epoch"]) for r in rows]
    ncol = min(5, len(columns))
    nrow = math.ceil(len(columns) / ncol)
    fig = _figure((3.2 * ncol, 2.6 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax, col in zip(axes.flat, columns):
        values = [float(r[col]) if r[col] not in ("", "nan") else float("nan") for r in rows]
        ax.plot(epochs, values, marker="o", markersize=3, linewidth=1.5)
        ax.set_title(col, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.tight_layout()
    out_path = Path(out_path) if out_path else csv_path.with_name("results.png")
    return _save_figure(fig, out_path)  # atomic: a reader never sees half a PNG


def _figure(size: tuple[float, float]) -> Figure:
    """A figure of ``size`` inches on its own Agg canvas (no pyplot: the process's backend is untouched)."""
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig: Figure, out_path: str | Path) -> Path:
    """PNG bytes of a figure written atomically (the one atomic-write helper)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return atomic_write_bytes(out_path, buf.getvalue())


def plot_pareto(points: list[dict], out_path: str | Path, metric: str = "mAP50-95",
                latency_label: str = "latency (ms per image)") -> Path:
    """Latency vs accuracy, one point per variant with its std over seeds as error bars; the Pareto front
    (no other variant is both faster and more accurate) is joined by a line.

    points: [{"label", "latency", "mean", "std", "latency_err" (optional)}]."""
    fig = _figure((6.4, 4.4))
    ax = fig.subplots()
    for i, pt in enumerate(points):
        ax.errorbar(pt["latency"], pt["mean"], yerr=pt.get("std") or 0.0, xerr=pt.get("latency_err") or None,
                    fmt="o", capsize=4, markersize=7, color=f"C{i % 10}", label=pt["label"])
        ax.annotate(pt["label"], (pt["latency"], pt["mean"]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    front = sorted((p for p in points if not any(q["latency"] <= p["latency"] and q["mean"] > p["mean"]
                                                  or q["latency"] < p["latency"] and q["mean"] >= p["mean"]
                                                  for q in points)), key=lambda p: p["latency"])
    if len(front) > 1:
        ax.plot([p["latency"] for p in front], [p["mean"] for p in front], "--", color="grey", linewidth=1,
                label="Pareto front")
    ax.set_xlabel(latency_label)
    ax.set_ylabel(f"{metric} (mean +- std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save_figure(fig, out_path)


def plot_curves(curves: dict[str, list[tuple[list[float], list[float]]]], out_path: str | Path,
                metric: str = "mAP50-95") -> Path:
    """Training curves of every variant on one plot: the mean over seeds per epoch (line) and the range
    of the seeds (band). curves: {variant: [(epochs, values) per seed]}."""
    fig = _figure((6.4, 4.4))
    ax = fig.subplots()
    for i, (label, runs) in enumerate(curves.items()):
        runs = [(e, v) for e, v in runs if e]
        if not runs:
            continue
        n = min(len(e) for e, _ in runs)  # epochs every seed has reached
        epochs = runs[0][0][:n]
        values = np.array([v[:n] for _, v in runs], dtype=np.float64)
        color = f"C{i % 10}"
        ax.plot(epochs, values.mean(0), marker="o", markersize=3, color=color, label=f"{label} ({len(runs)} seeds)")
        if len(runs) > 1:
            ax.fill_between(epochs, values.min(0), values.max(0), color=color, alpha=0.18)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save_figure(fig, out_path)
