"""Detection heads (one per family). Importing this package registers them."""

from rtdet.nn.heads import dfine, rtdetr, rtdetrv2, rtmdet, yolo  # noqa: F401
