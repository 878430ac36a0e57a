"""Built-in modules, by origin. Importing this package registers them all."""

from rtdet.nn.modules import (  # noqa: F401
    common,
    convnextv2,
    cspnext,
    dfine_encoder,
    dysample,
    hgnet,
    hgnetv2,
    preprocess,
    presnet,
    resnet,
    rtdetrv2,
    shvit,
    transformer,
    yolov9,
)
