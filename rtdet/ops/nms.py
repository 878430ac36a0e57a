"""Non-maximum suppression with torchvision's semantics, with or without torchvision.

``nms`` / ``batched_nms`` keep, in order of decreasing score, every box whose IoU with an already kept,
higher-scored box (of the same class for ``batched_nms``) is not greater than ``iou_threshold``. They call
``torchvision.ops`` when it is importable and otherwise run the pure-PyTorch path below, which returns
the same indices.

The pure path is vectorised over boxes: boxes are ordered by class, then by decreasing score; overlaps
above the threshold are found block by block, each block only against the rest of its classes (memory
O(block · N), not N²), and kept as an edge list (i suppresses j, i scored higher); greedy NMS is then the
unique fixed point of ``keep[j] = not any(keep[i] for edges i -> j)``, reached by a few whole-tensor
sweeps (Cluster-NMS, Zheng et al. 2021) instead of a Python loop over boxes. Ties in score keep the
original order (stable sort).
"""

from __future__ import annotations

import torch

__all__ = ["nms", "batched_nms", "dense_nms", "nms_torch", "batched_nms_torch", "HAS_TORCHVISION"]

try:  # optional: not installable next to every torch build
    from torchvision.ops import batched_nms as _tv_batched_nms
    from torchvision.ops import nms as _tv_nms

    HAS_TORCHVISION = True
except Exception:  # ImportError, or a torchvision built against another torch
    HAS_TORCHVISION = False

_BLOCK = 2048


def _check(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor | None = None) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"nms: boxes must be [N, 4] xyxy, got shape {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms: scores must be [N] = [{boxes.shape[0]}], got shape {tuple(scores.shape)}")
    if idxs is not None and idxs.shape != boxes.shape[:1]:
        raise ValueError(f"batched_nms: idxs must be [N] = [{boxes.shape[0]}], got shape {tuple(idxs.shape)}")


def _suppression_edges(boxes: torch.Tensor, iou_threshold: float, group_end: torch.Tensor | None,
                       block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (i, j), i < j, with IoU(i, j) > threshold, for boxes sorted by group then decreasing score.

    ``group_end[i]`` is the end of i's group in that order (None: one group). A block of rows is compared
    only with the columns from its first row to the end of its last row's group, so class-aware NMS costs
    about N · (block + class size) IoUs instead of N².
    """
    n = boxes.shape[0]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    src, dst = [], []
    for s in range(0, n, block):  # blocks of rows; each row only needs the boxes after it in its group
        e = min(s + block, n)
        end = n if group_end is None else int(group_end[e - 1])
        a, b = boxes[s:e, None], boxes[None, s:end]
        w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
        h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
        inter = w * h
        # the same expression as torchvision's kernel, so the comparisons agree to the bit
        over = inter / (area[s:e, None] + area[None, s:end] - inter) > iou_threshold
        over = over.triu(1)  # row r is box s + r, column c is box s + c: keep c > r
        if group_end is not None:
            over &= group_end[s:e, None] == group_end[None, s:end]  # same group <=> same end
        i, j = over.nonzero(as_tuple=True)
        src.append(i + s)
        dst.append(j + s)
    return torch.cat(src), torch.cat(dst)


def _greedy_keep(n: int, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Fixed point of keep[j] = not any(keep[i] for i -> j); equals sequential greedy NMS."""
    keep = torch.ones(n, dtype=torch.bool, device=src.device)
    # box k is final after (longest suppression chain ending at k) sweeps, so this stops within n sweeps
    for _ in range(n + 1):
        suppressed = torch.zeros_like(keep)
        suppressed[dst[keep[src]]] = True
        new = ~suppressed
        if torch.equal(new, keep):
            break
        keep = new
    return keep


def batched_nms_torch(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor | None,
                      iou_threshold: float, block: int | None = None) -> torch.Tensor:
    """Pure-PyTorch (class-aware when ``idxs`` is given) NMS; indices of kept boxes by decreasing score.

    boxes [N, 4] xyxy, scores [N], idxs [N] integer class (or None for class-agnostic) -> int64 [K].
    ``block``: rows per IoU block (default: about 4M IoUs per block).
    """
    _check(boxes, scores, idxs)
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    by_score = torch.sort(scores, descending=True, stable=True).indices
    group_end, order, group_size = None, by_score, n
    if idxs is not None:  # group by class, keeping score order (and index order on ties) inside a class
        order = by_score[torch.sort(idxs[by_score], stable=True).indices]
        _, counts = torch.unique_consecutive(idxs[order], return_counts=True)
        group_end = torch.repeat_interleave(counts.cumsum(0), counts)
        group_size = -(-n // counts.numel())
    if block is None:  # a block costs block x (block + group size) IoUs: about 4M at most
        block = max(64, min(4096, (1 << 22) // n, 2 * group_size))
    src, dst = _suppression_edges(boxes[order], float(iou_threshold), group_end, block)
    keep = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep[order] = _greedy_keep(n, src, dst)
    return by_score[keep[by_score]]


def nms_torch(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Pure-PyTorch class-agnostic NMS (see ``batched_nms_torch``)."""
    return batched_nms_torch(boxes, scores, None, iou_threshold)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-agnostic NMS: boxes [N, 4] xyxy, scores [N] -> kept indices [K] by decreasing score."""
    if HAS_TORCHVISION:
        return _tv_nms(boxes, scores, float(iou_threshold))
    return nms_torch(boxes, scores, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """Class-aware NMS (boxes of different ``idxs`` never suppress each other), like
    ``torchvision.ops.batched_nms``: boxes [N, 4] xyxy, scores [N], idxs [N] -> kept indices [K]."""
    if HAS_TORCHVISION:
        return _tv_batched_nms(boxes, scores, idxs, float(iou_threshold))
    return batched_nms_torch(boxes, scores, idxs, iou_threshold)


def dense_nms(boxes: torch.Tensor, scores: torch.Tensor, conf: float = 0.25, iou: float = 0.7, max_det: int = 300,
              multi_label: bool = False, max_candidates: int = 30000,
              agnostic: bool = False) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Post-processing of dense detectors (YOLO, RTMDet) for a whole batch in one NMS call.

    boxes [B, N, 4] xyxy, scores [B, N, C] probabilities -> per image (boxes [k, 4], scores [k], labels
    [k] int64), best first, k <= max_det. A candidate is a (box, class) pair scoring above ``conf``:
    the best class of each box, or every class above ``conf`` with ``multi_label``. Each image keeps its
    ``max_candidates`` best candidates, then class-aware NMS at IoU ``iou`` (class-agnostic with
    ``agnostic``) runs over all images at once, images never suppressing each other.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or scores.dim() != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise ValueError(f"dense_nms: expected boxes [B, N, 4] and scores [B, N, C], got {tuple(boxes.shape)} and "
                         f"{tuple(scores.shape)}")
    b, n, c = scores.shape
    if multi_label:
        img, anchor, label = (scores > conf).nonzero(as_tuple=True)
        score = scores[img, anchor, label]
    else:
        best, best_label = scores.max(-1)
        img, anchor = (best > conf).nonzero(as_tuple=True)
        score, label = best[img, anchor], best_label[img, anchor]
    # at most max_candidates per image: rank candidates by score inside their image
    order = torch.sort(score, descending=True, stable=True).indices
    order = order[torch.sort(img[order], stable=True).indices]
    img, anchor, label, score = img[order], anchor[order], label[order], score[order]
    rank = _rank_in_group(img, b)
    chosen = rank < max_candidates
    img, anchor, label, score = img[chosen], anchor[chosen], label[chosen], score[chosen]
    cand = boxes[img, anchor]
    group = img if agnostic else img * c + label
    keep = _first_survivors(cand.float(), score.float(), group, img, rank[chosen], b, iou, max_det)
    keep = keep[torch.sort(img[keep], stable=True).indices]  # by image, best first inside each image
    keep = keep[_rank_in_group(img[keep], b) < max_det]
    counts = torch.bincount(img[keep], minlength=b).tolist()
    out_boxes, out_scores, out_labels = (t[keep].split(counts) for t in (cand, score, label))
    return list(zip(out_boxes, out_scores, out_labels))


def _first_survivors(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, img: torch.Tensor,
                     rank: torch.Tensor, n_img: int, iou: float, max_det: int) -> torch.Tensor:
    """Indices of candidates that NMS over all of them keeps, complete for each image's best ``max_det``.

    Greedy NMS decides a box from the boxes ranked above it alone, so the survivors among an image's k best
    candidates are exactly its survivors that rank that high: once they number ``max_det``, the rest of
    its candidates cannot change its answer. NMS therefore runs on each image's best 4 · max_det
    candidates first and again, on 4x as many, only for the images still short of max_det survivors --
    the same result as one NMS over every candidate (validation's 30,000 per image) at a fraction of the
    cost. Candidates are sorted by image, then rank (``rank`` = position inside the image).
    """
    counts = torch.bincount(img, minlength=n_img)
    limit = torch.full((n_img,), 4 * max_det, dtype=torch.int64, device=img.device)
    done = torch.zeros(n_img, dtype=torch.bool, device=img.device)
    found = []
    while not bool(done.all()):
        idx = ((rank < limit[img]) & ~done[img]).nonzero(as_tuple=True)[0]
        kept = idx[batched_nms(boxes[idx], scores[idx], groups[idx], iou)]
        n_kept = torch.bincount(img[kept], minlength=n_img)
        final = ~done & ((n_kept >= max_det) | (limit >= counts))
        found.append(kept[final[img[kept]]])
        done |= final
        limit = limit * 4
    return torch.cat(found) if found else torch.empty(0, dtype=torch.int64, device=img.device)


def _rank_in_group(group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Position of each entry among the entries of its group, for entries already sorted by group."""
    counts = torch.bincount(group, minlength=n_groups)
    starts = counts.cumsum(0) - counts
    return torch.arange(group.numel(), device=group.device) - starts[group]
