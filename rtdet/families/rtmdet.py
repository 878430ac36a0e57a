"""RTMDet (Lyu et al. 2022): the shared-conv separated-BN head, dynamic soft-label assignment."""

from rtdet.families.record import CFG, Family, register_family
from rtdet.losses.rtmdet import RTMDetCriterion
from rtdet.nn.heads.rtmdet import RTMDetSepBNHead

RTMDET = register_family(Family(
    name="rtmdet",
    heads=(RTMDetSepBNHead,),
    criterion=RTMDetCriterion,
    recipe=CFG / "recipes" / "rtmdet.yaml",
    demo=CFG / "demo" / "rtmdet.yaml",
    pipelines=tuple(CFG / "pipelines" / f"{name}.yaml" for name in ("rtmdet", "rtmdet-s", "rtmdet-tiny")),
    converters=("rtdet.io.mmdet",),  # mmdetection checkpoints
))
