"""D-FINE (Peng et al. 2024) and DEIM (Huang et al. 2025): an RT-DETR-style decoder whose boxes are
distributions over edge offsets refined layer by layer, trained with matching, denoising, FGL and GO-LSD
self-distillation (DEIM: the matchability-aware loss, ``loss=mal``, and its dense one-to-one data schedule).
A DEIM model is a D-FINE model trained with DEIM's settings, so both are this one family."""

from rtdet.families.record import CFG, Family, register_family
from rtdet.losses.dfine import DFineCriterion
from rtdet.nn.heads.dfine import DFINEDecoder

DFINE = register_family(Family(
    name="dfine",
    heads=(DFINEDecoder,),
    criterion=DFineCriterion,
    recipe=CFG / "recipes" / "dfine.yaml",  # D-FINE-S's official values; DEIM's: cfg=deim
    pipelines=(CFG / "pipelines" / "dfine.yaml", CFG / "pipelines" / "deim.yaml"),
    demo=CFG / "demo" / "dfine.yaml",
    converters=("rtdet.io.dfine",),  # official D-FINE / DEIM-D-FINE checkpoints
))
