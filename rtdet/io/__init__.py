"""Model sources: one loader for model YAMLs, rtdet checkpoints and foreign checkpoints.

    from rtdet.io import load_model, convert_file
    loaded = load_model("rtdetr-l.pt")            # an Ultralytics checkpoint, converted in memory
    path, loaded = convert_file("rtdetr-l.pt")    # ... written as rtdetr-l-rtdet.pt (weights_only-loadable)

* :mod:`rtdet.io.safe_pickle` reads pickles of foreign classes without running their code;
* :mod:`rtdet.io.foreign` extracts a pickled module tree's tensors and plain metadata;
* :mod:`rtdet.io.rules` holds the key tables and the load report;
* :mod:`rtdet.io.formats` registers one converter per source (:mod:`rtdet.io.ultralytics`,
  :mod:`rtdet.io.yolov9`, :mod:`rtdet.io.mmdet`, :mod:`rtdet.io.dfine`,
  :mod:`rtdet.io.backbones`);
* :mod:`rtdet.io.load` is the loader every entry point calls; :mod:`rtdet.io.rows` loads the weights a
  YAML backbone row names; :mod:`rtdet.io.transplant` moves weights between two models by structure.
"""

from rtdet.io.formats import ConvertContext, Converted, ForeignFormat, find_format, formats, register_format
from rtdet.io.load import (
    INHERITED_KEYS,
    LoadedModel,
    build_model,
    convert_file,
    is_checkpoint,
    load_model,
    transfer_weights,
)
from rtdet.io.rules import ConversionReport, KeyRule, KeyTable, WeightLoadError, drop, load_into, rename
from rtdet.io.safe_pickle import ForeignObject, UnsafePickleError, read_checkpoint, read_torch_file
from rtdet.io.transplant import TransplantReport, transplant

__all__ = [
    "INHERITED_KEYS",
    "ConversionReport",
    "ConvertContext",
    "Converted",
    "ForeignFormat",
    "ForeignObject",
    "TransplantReport",
    "KeyRule",
    "KeyTable",
    "LoadedModel",
    "UnsafePickleError",
    "WeightLoadError",
    "build_model",
    "convert_file",
    "drop",
    "find_format",
    "formats",
    "is_checkpoint",
    "load_into",
    "load_model",
    "read_checkpoint",
    "read_torch_file",
    "register_format",
    "rename",
    "transfer_weights",
    "transplant",
]
