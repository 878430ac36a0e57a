"""RT-DETR (Zhao et al. 2024): the hybrid-encoder DETR decoder, Hungarian matching with denoising queries.
RT-DETRv2 (Lv et al. 2024) and DEIM's RT-DETRv2 models (deim-rtv2-*.yaml, trained with cfg=deim-rtv2) are the
same family: their decoder gives RT-DETR's training output, so one criterion trains both heads."""

from rtdet.families.record import CFG, Family, register_family
from rtdet.losses.rtdetr import RTDETRCriterion
from rtdet.nn.heads.rtdetr import RTDETRDecoder
from rtdet.nn.heads.rtdetrv2 import RTDETRv2Decoder

RTDETR = register_family(Family(
    name="rtdetr",
    heads=(RTDETRDecoder, RTDETRv2Decoder),  # RT-DETRv2 / DEIM-RTv2: the same criterion (DEIM: loss=mal)
    criterion=RTDETRCriterion,
    recipe=CFG / "recipes" / "rtdetr.yaml",
    demo=CFG / "demo" / "rtdetr.yaml",
    pipelines=(CFG / "pipelines" / "rtdetr.yaml",),
    converters=("rtdet.io.ultralytics", "rtdet.io.rtdetrv2"),  # Ultralytics RT-DETR; official RT-DETRv2 / DEIM-RTv2
))
