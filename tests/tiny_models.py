"""The smallest real RT-DETR that the tests build, train and convert: four strided Convs (/2 ... /16), the
decoder on /8 and /16 (hidden 32, 2 points, 2 heads, 1 layer, FFN 64). A training step takes milliseconds."""


def tiny_rtdetr_yaml(nc: int = 2, queries: int = 10, denoising: int = 10) -> str:
    """Model YAML text of the tiny RT-DETR with ``nc`` classes, ``queries`` object and ``denoising`` queries."""
    return f"""\
nc: {nc}
backbone:
  - [-1, 1, Conv, [8, 3, 2]]    # 0 /2
  - [-1, 1, Conv, [16, 3, 2]]   # 1 /4
  - [-1, 1, Conv, [16, 3, 2]]   # 2 /8
  - [-1, 1, Conv, [32, 3, 2]]   # 3 /16
head:
  - [[2, 3], 1, RTDETRDecoder, [nc, 32, {queries}, 2, 2, 1, 64, 0.0, None, -1, {denoising}]]
"""
