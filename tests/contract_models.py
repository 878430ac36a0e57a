"""Which models the contract test (tests/test_contract.py) runs: every registered head and every built-in
model YAML, found at collection time so that a new family is tested without editing any list.

* :func:`contract_heads` -- the registry's heads defined in the rtdet package, one name per class. Heads
  that tests register for themselves (the export tests' toy head) are left out: whether they are
  registered at collection time depends on which test files were imported first.
* :func:`builtin_yamls` -- every ``rtdet/cfg/models/**/*.yaml`` with the head its last row names.
* :func:`model_for_head` -- the model a head's default-suite cases build: a tiny test YAML when the tests
  have one for that head (milliseconds per step), else its smallest built-in YAML by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

import rtdet
from rtdet.nn.builder import load_model_yaml
from rtdet.nn.registry import lookup, registered_names
from tests.engine.conftest import RTMDET_TINY_YAML, TINY_YOLO_YAML
from tests.tiny_models import tiny_rtdetr_yaml

MODELS_DIR = Path(rtdet.__file__).parent / "cfg" / "models"



def _yolo_single_head(head: str) -> str:
    """The tiny YOLOv9 of tests/engine/conftest.py without its auxiliary (PGI) branch, ``head`` reading the
    main /8 and /16 maps: a tiny GELAN (DDetect) or Ultralytics-style (Detect) model."""
    rows = [line for line in TINY_YOLO_YAML.splitlines() if "auxiliary" not in line and "DualDDetect" not in line]
    return "\n".join([*rows, f"  - [[7, 4], 1, {head}, [nc]]", ""])


# The tiny models the engine tests train (tests/tiny_models.py, tests/engine/conftest.py) and their
# single-head YOLO variants; the head each one exercises is read from its last row, not written here.
# D-FINE in miniature: three strided Convs feeding the decoder on /4, /8, /16 (hidden 32, points [2, 3, 2],
# 3 layers, 4 heads, reg_max 16, 10 denoising queries, DEIM's SiLU).
TINY_DFINE_YAML = """\
nc: 3
batchnorm: {eps: 1.0e-5, momentum: 0.1}
backbone:
  - [-1, 1, Conv, [8, 3, 2]]    # 0 /2
  - [-1, 1, Conv, [16, 3, 2]]   # 1 /4
  - [-1, 1, Conv, [32, 3, 2]]   # 2 /8
  - [-1, 1, Conv, [32, 3, 2]]   # 3 /16
head:
  - [[1, 2, 3], 1, DFINEDecoder, [nc, 32, 20, [2, 3, 2], 3, 64, 4, 16, 4, -1, 10, silu]]
"""

# RT-DETRv2 in miniature, DEIM's variant: the same strided Convs feeding RTDETRv2Decoder on /4, /8, /16 (hidden 32,
# points [2, 3, 2], 3 layers, 4 heads, 10 denoising queries, SiLU FFNs and MLPs, as_reg query positions).
TINY_RTV2_YAML = TINY_DFINE_YAML.split("head:")[0] + """head:
  - [[1, 2, 3], 1, RTDETRv2Decoder, [nc, 32, 20, [2, 3, 2], 3, 64, 4, -1, 10, silu, silu, as_reg]]
"""

TINY_YAMLS = {"rtdetr-tiny": tiny_rtdetr_yaml(nc=3, queries=20, denoising=20), "yolov9-tiny": TINY_YOLO_YAML,
              "gelan-tiny": _yolo_single_head("DDetect"), "yolov9u-tiny": _yolo_single_head("Detect"),
              "rtmdet-micro": RTMDET_TINY_YAML, "dfine-tiny": TINY_DFINE_YAML,
              "rtv2-tiny": TINY_RTV2_YAML}

# Width/depth letters of the built-in file names, smallest first: a model's size is guessed from its
# name (yolov9-demo < yolov9-t < yolov9-s ...) because building every YAML to count parameters would
# cost the default suite about 30 s. The slow matrix builds and checks all of them anyway.
_SIZE_ORDER = ["demo", "atto", "femto", "pico", "nano", "tiny", "n", "t", "s", "m", "c", "l", "b", "x", "e"]


@dataclass(frozen=True)
class ModelSource:
    """A model the contract builds: a short name for test ids and a YAML path or the YAML's text."""

    name: str
    cfg: str  # a path to a YAML file, or YAML text (tiny test models)
    is_text: bool = False

    def config(self) -> str | dict:
        """What build_model takes: the path, or the parsed text."""
        return yaml.safe_load(self.cfg) if self.is_text else self.cfg


def head_name(d: dict) -> str:
    """The registered name of the module in a model YAML's last row (its head)."""
    return str(d["head"][-1][2])


def contract_heads() -> list[str]:
    """Registered head names of the rtdet package, one per head class, sorted."""
    seen, names = set(), []
    for name in registered_names():
        entry = lookup(name)
        if entry.is_head and entry.cls.__module__.startswith("rtdet.") and entry.cls not in seen:
            seen.add(entry.cls)
            names.append(name)
    return names


def builtin_yamls() -> list[Path]:
    """Every built-in model YAML, sorted by path."""
    return sorted(MODELS_DIR.rglob("*.yaml"))


def head_class_of(d: dict) -> type:
    return lookup(head_name(d)).cls


def _size_rank(path: Path) -> tuple[int, str]:
    """Sort key: the first size word or letter in the file's stem (``gelan-t``, ``yolov9s``, ``rtmdet-tiny``)."""
    for word in re.split(r"[-_]", path.stem):
        for rank, size in enumerate(_SIZE_ORDER):
            if word == size or re.fullmatch(rf"[a-z]+\d+{size}", word):
                return rank, path.name
    return len(_SIZE_ORDER), path.name


def yamls_using(head: str) -> list[Path]:
    """The built-in YAMLs whose head is ``head`` (the same registered class), smallest first by name."""
    cls = lookup(head).cls
    return sorted((p for p in builtin_yamls() if head_class_of(load_model_yaml(p)) is cls), key=_size_rank)


def model_for_head(head: str) -> ModelSource | None:
    """The tiny test YAML for ``head`` when there is one, else its smallest built-in YAML; None when the
    head has neither (a family must ship a model YAML)."""
    cls = lookup(head).cls
    for name, text in TINY_YAMLS.items():
        if head_class_of(yaml.safe_load(text)) is cls:
            return ModelSource(name, text, is_text=True)
    found = yamls_using(head)
    return ModelSource(found[0].stem, str(found[0])) if found else None
