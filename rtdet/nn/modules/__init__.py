"""Built-in modules, by origin. Importing this package registers them all."""

from rtdet.nn.modules import common, convnextv2, dysample, hgnet, resnet, shvit, transformer, yolov9  # noqa: F401
