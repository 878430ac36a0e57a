"""D-FINE (Peng et al. 2024): an RT-DETR-style decoder whose boxes are distributions over edge offsets,
refined layer by layer (Fine-grained Distribution Refinement, :mod:`rtdet.ops.fdr`).

:class:`DFINEDecoder` is the head of the D-FINE and DEIM-D-FINE models (DEIM: ``act="silu"``). Maps are
projected to ``hidden_dim`` channels (identity when they have it already) and flattened into one memory;
every memory token proposes a box from its anchor, the ``num_queries`` tokens with the highest class logit
become the decoder's queries, and the decoder layers (:mod:`rtdet.nn.modules.dfine_decoder`) refine a
distribution over each box edge's offset from the first layer's box. In training, noised copies of the GT
boxes (denoising queries) are decoded alongside.

Outputs:
- eval: [B, k, 6] = (cx, cy, w, h normalised, score, class), the top k = num_queries over queries x
  classes of the ``eval_idx`` layer (sigmoid scores, no NMS), read by :meth:`DFINEDecoder.decode`;
- train: :class:`DFineTrainOutput`, every layer stacked, denoising queries first.

Parameter names, shapes and creation order follow the official ``DFINETransformer`` so that an official
state dict maps key for key (``decoder.`` prefix aside). Left out, because they are derived: the
``anchors`` / ``valid_mask`` buffers (computed from the input size and cached), the ``decoder.decoder.up``
/ ``decoder.decoder.reg_scale`` aliases of ``up`` / ``reg_scale``, and the ``integral`` module (no weights).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn as nn

from rtdet.nn.heads.query import QueryHead
from rtdet.nn.modules.dfine_decoder import DFineDecoderLayer, DFineHeads, DFineTransformerDecoder
from rtdet.nn.modules.transformer import MLP
from rtdet.nn.registry import register, resolve_activation
from rtdet.ops.fdr import weighting_function

__all__ = ["DFINEDecoder", "DFineTrainOutput"]

CLASS_PRIOR = -math.log((1 - 0.01) / 0.01)  # logit of a 0.01 class prior, not scaled by nc (unlike RT-DETR's)
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU}


class DFineTrainOutput(NamedTuple):
    """What the D-FINE decoder returns in training (read by the D-FINE criterion).

    Q = num_dn + nq queries, denoising queries first (split by ``dn_meta``); L decoder layers, the last one
    the teacher of the others; boxes are sigmoid cx cy w h (normalised); R = reg_max.
    """

    dec_bboxes: torch.Tensor  # [L, B, Q, 4] every decoder layer's boxes
    dec_scores: torch.Tensor  # [L, B, Q, nc] every decoder layer's class logits (the LQE term included)
    dec_corners: torch.Tensor  # [L, B, Q, 4 * (R + 1)] every decoder layer's edge-offset logits
    ref_points: torch.Tensor  # [B, Q, 4] the fixed reference of every layer's edges (the detached pre box)
    pre_bboxes: torch.Tensor  # [B, Q, 4] the first layer's box before refinement
    pre_scores: torch.Tensor  # [B, Q, nc] the first layer's class logits without the LQE term
    enc_bboxes: torch.Tensor  # [B, nq, 4] the encoder's top-k proposals
    enc_scores: torch.Tensor  # [B, nq, nc] their logits
    project: torch.Tensor  # [R + 1] W(n), the bin positions (rtdet.ops.fdr.weighting_function)
    reg_scale: torch.Tensor  # [] the edge unit divisor c
    dn_meta: dict | None  # denoising layout, as RT-DETR's (None without ground truth)


def activation_factory(act: str | nn.Module | None) -> Callable[[], nn.Module]:
    """``"relu"`` / ``"silu"`` / ``"gelu"``, a torch.nn spec (``"nn.SiLU()"``) or a module -> a function that
    makes a fresh activation for each place that needs one (None: ReLU, D-FINE's default)."""
    if act is None:
        return nn.ReLU
    if isinstance(act, str) and act.lower() in _ACTIVATIONS:
        return _ACTIVATIONS[act.lower()]
    module = resolve_activation(act)
    return lambda: copy.deepcopy(module)


def _input_proj(c: int, hidden_dim: int) -> nn.Module:
    """Identity for a map that already has ``hidden_dim`` channels, else conv1x1 (no bias) + BN."""
    if c == hidden_dim:
        return nn.Identity()
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(c, hidden_dim, 1, bias=False), norm=nn.BatchNorm2d(hidden_dim)))


@register(channels="head")
class DFINEDecoder(QueryHead):
    """D-FINE head: input projection, encoder query selection, FDR decoder with LQE, denoising.

    YAML ``[[p3, p4, p5], 1, DFINEDecoder, [nc, 256, 300, [3, 6, 3], 3, 1024, 8, 32, 4, -1, 100]]`` builds
    ``DFINEDecoder(nc, [c3, c4, c5], hidden_dim, num_queries, num_points, num_layers, dim_feedforward, nhead,
    reg_max, reg_scale, eval_idx, num_denoising, act, label_noise_ratio, box_noise_scale)`` (the official
    config names). ``num_points``: sampling points per head of each level (an int: the same for all);
    ``reg_max``: the last bin index (reg_max + 1 bins per edge); ``reg_scale``: the edge unit divisor c;
    ``eval_idx``: the decoder layer inference reads; ``act``: activation of the FFNs, LQEs and every MLP
    ("relu" for D-FINE, "silu" for DEIM).
    """

    family = "dfine"
    clip_boxes = False  # the reference post-processor does not clip
    # The criterion decides which outputs feed the loss; DDP must tolerate one that leaves some unused.
    ddp_find_unused_parameters = True
    dynamic = False  # True (set by the exporter for dynamic=True): anchors follow the traced input size

    def __init__(self, nc: int = 80, ch: Sequence[int] = (256, 256, 256), hidden_dim: int = 256,
                 num_queries: int = 300, num_points: int | Sequence[int] = (3, 6, 3), num_layers: int = 6,
                 dim_feedforward: int = 1024, nhead: int = 8, reg_max: int = 32, reg_scale: float = 4.0,
                 eval_idx: int = -1, num_denoising: int = 100, act: str | nn.Module | None = "relu",
                 label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0):
        super().__init__()
        self.nc, self.hidden_dim, self.num_queries, self.nl = nc, hidden_dim, num_queries, len(ch)
        self.reg_max, self.num_layers = reg_max, num_layers
        points = [int(num_points)] * self.nl if isinstance(num_points, int) else [int(n) for n in num_points]
        if len(points) != self.nl:
            raise ValueError(f"DFINEDecoder: num_points {list(points)} gives {len(points)} levels, but it reads "
                             f"{self.nl} maps")
        if reg_max < 4 or reg_max % 2:  # W(n) is symmetric about bin reg_max / 2, with reg_max - 2 inner steps
            raise ValueError(f"DFINEDecoder: reg_max must be an even number >= 4, got {reg_max}")
        make_act = activation_factory(act)
        self.input_proj = nn.ModuleList(_input_proj(c, hidden_dim) for c in ch)
        # Frozen constants held as Parameters, as in the reference (counted, saved): the bins' reach
        # and the edge unit. Official checkpoints store reg_scale as int64 [1]; loading casts it.
        self.up = nn.Parameter(torch.tensor([0.5]), requires_grad=False)
        self.reg_scale = nn.Parameter(torch.tensor([float(reg_scale)]), requires_grad=False)
        layer = DFineDecoderLayer(hidden_dim, nhead, dim_feedforward, points, make_act)
        self.decoder = DFineTransformerDecoder(layer, num_layers, reg_max, eval_idx, make_act)
        self.eval_idx = self.decoder.eval_idx
        self.num_denoising = num_denoising
        self.label_noise_ratio, self.box_noise_scale = label_noise_ratio, box_noise_scale
        # row nc is the padding class of empty denoising slots (zeros, never trained)
        self.denoising_class_embed = nn.Embedding(nc + 1, hidden_dim, padding_idx=nc) if num_denoising > 0 else None
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, 2, act=make_act)
        self.enc_output = nn.Sequential(OrderedDict(proj=nn.Linear(hidden_dim, hidden_dim),
                                                    norm=nn.LayerNorm(hidden_dim)))
        self.enc_score_head = nn.Linear(hidden_dim, nc)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3, act=make_act)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, nc) for _ in range(num_layers))
        self.pre_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3, act=make_act)
        self.dec_bbox_head = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4 * (reg_max + 1), 3, act=make_act)
                                           for _ in range(num_layers))
        self.register_buffer("project", None, persistent=False)  # W(n), cached by fuse_ (a constant then)
        self._anchor_cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        self.deployed = False
        self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        """The reference initialisation (the decoder layers, gates, LQEs and attention init themselves)."""
        nn.init.constant_(self.enc_score_head.bias, CLASS_PRIOR)
        for mlp in [self.enc_bbox_head, self.pre_bbox_head, *self.dec_bbox_head]:
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)
        for lin in self.dec_score_head:
            nn.init.constant_(lin.bias, CLASS_PRIOR)
        nn.init.xavier_uniform_(self.enc_output.proj.weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)
        for proj in self.input_proj:
            if isinstance(proj, nn.Sequential):
                nn.init.xavier_uniform_(proj.conv.weight)

    # ------------------------------------------------------------------ pieces
    def weights(self) -> torch.Tensor:
        """W(n), [reg_max + 1]: the cached constant after :meth:`fuse_`, else computed from ``up`` and
        ``reg_scale`` (detached: they are constants, even if something switches their gradient on)."""
        if self.project is not None:
            return self.project
        return weighting_function(self.reg_max, self.up.detach(), self.reg_scale.detach())

    def _heads(self) -> DFineHeads:
        return DFineHeads(self.query_pos_head, self.pre_bbox_head, self.dec_bbox_head, self.dec_score_head)

    # ------------------------------------------------------------------ forward
    def forward(self, feats: list[torch.Tensor], targets: dict | None = None):
        """feats: maps [B, ch_l, H_l, W_l]; targets: the batch dict (read in training for denoising).
        Eval -> [B, k, 6]; train -> :class:`DFineTrainOutput`."""
        if self.training and self.deployed:
            raise RuntimeError("DFINEDecoder was fused for inference (fuse_ dropped training-only layers); "
                               "train an unfused copy")
        memory, shapes = self.flatten_levels(feats)
        content, box_logits, enc_bboxes, enc_scores = self.select_queries(memory, shapes)
        project = self.weights()
        if not self.training:
            out = self.decoder(content, box_logits, memory, shapes, self._heads(), project, self.reg_scale)
            return self.top_queries(out.boxes[-1], out.logits[-1])
        # Queries start from detached proposals: the encoder learns through enc_bboxes / enc_scores only.
        content, box_logits = content.detach(), box_logits.detach()
        content, box_logits, attn_mask, dn_meta = self.add_denoising(content, box_logits, targets)
        out = self.decoder(content, box_logits, memory, shapes, self._heads(), project, self.reg_scale,
                           attn_mask=attn_mask)
        return DFineTrainOutput(out.boxes, out.logits, out.corners, out.ref_init, out.pre_boxes, out.pre_logits,
                                enc_bboxes, enc_scores, project, self.reg_scale.detach().reshape(()), dn_meta)


    # ------------------------------------------------------------------ interface
    def fuse_(self) -> None:
        """The reference deploy form, in place: drop the decoder layers (and their box / score heads) after
        ``eval_idx`` and the score heads and LQEs before it (identities keep the indices), and cache W(n).
        The denoising embedding and the input projections' BatchNorms stay, as in the reference."""
        keep = self.eval_idx + 1
        self.project = self.weights().detach().clone()
        self.decoder.layers = self.decoder.layers[:keep]
        self.dec_bbox_head = self.dec_bbox_head[:keep]
        self.dec_score_head = nn.ModuleList([*(nn.Identity() for _ in range(self.eval_idx)),
                                             self.dec_score_head[self.eval_idx]])
        self.decoder.lqe_layers = nn.ModuleList([*(nn.Identity() for _ in range(self.eval_idx)),
                                                 self.decoder.lqe_layers[self.eval_idx]])
        self.deployed = True
