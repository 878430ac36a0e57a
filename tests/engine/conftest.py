"""Shared fixtures for the engine tests: a tiny RT-DETR, a tiny YOLOv9 with PGI, and a tiny synthetic dataset
(seconds to train)."""

from pathlib import Path

import pytest

from tests.tiny_models import tiny_rtdetr_yaml

# Two pyramid levels, hidden 32, one decoder layer, 20 queries and 20 denoising queries: a real RT-DETR
# (AIFI-free) small enough that a training step takes milliseconds.
TINY_YAML = tiny_rtdetr_yaml(nc=2, queries=20, denoising=20)

# Two levels (/8, /16), a main GELAN neck and an auxiliary branch of single Convs, DualDDetect: a real YOLOv9
# with PGI in miniature (about 0.1M parameters).
TINY_YOLO_YAML = """\
nc: 2
backbone:
  - [-1, 1, Conv, [8, 3, 2]]                 # 0 /2
  - [-1, 1, Conv, [16, 3, 2]]                # 1 /4
  - [-1, 1, ADown, [16]]                     # 2 /8
  - [-1, 1, RepNCSPELAN4, [16, 16, 8, 1]]    # 3
  - [-1, 1, AConv, [32]]                     # 4 /16
head:
  - [-1, 1, nn.Upsample, [None, 2, nearest]] # 5
  - [[-1, 3], 1, Concat, [1]]                # 6
  - [-1, 1, ELAN1, [16, 16, 8]]              # 7 main P3
  - [3, 1, Conv, [16, 3, 1]]                 # 8 auxiliary P3
  - [4, 1, Conv, [32, 3, 1]]                 # 9 auxiliary P4
  - [[8, 9, 7, 4], 1, DualDDetect, [nc]]     # 10
"""


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Tiny models run fastest on one thread: OpenMP start-up dominates their small kernels."""


@pytest.fixture(scope="session")
def tiny_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "rtdetr-tiny.yaml"
    path.write_text(TINY_YAML)
    return path


@pytest.fixture(scope="session")
def tiny_yolo_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "yolov9-tiny.yaml"
    path.write_text(TINY_YOLO_YAML)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """8 train / 4 val images of 64x64 with 1-3 large shapes of 2 classes."""
    from rtdet.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(root, n_train=8, n_val=4, imgsz=64, seed=0, n_classes=2, min_objects=1,
                                  max_objects=3, size_range=(0.3, 0.6))


@pytest.fixture
def tiny_settings(tiny_yaml, tiny_data, tmp_path) -> dict:
    """Trainer settings for a seconds-long deterministic CPU run into tmp_path (the recipe as written: these
    runs test the trainer's mechanics; tests/engine/test_autorecipe.py tests recipe=auto)."""
    return {"model": str(tiny_yaml), "data": str(tiny_data), "imgsz": 64, "batch": 4, "epochs": 2, "workers": 0,
            "device": "cpu", "project": str(tmp_path / "runs"), "val": False, "plots": False, "verbose": False,
            "train_pipeline": "plain", "lr0": 1e-3, "warmup_iters": 1, "seed": 0, "deterministic": True,
            "recipe": "official"}


# A real RTMDet graph (input normalisation, CSPNeXt stem / CSP layers / SPP, CSPNeXtPAFPN rows, the shared-conv
# head) at widths of 8-32 channels: a training step takes milliseconds. It names its pipeline as the
# built-in RTMDet YAMLs do.
RTMDET_TINY_YAML = """\
nc: 2
batchnorm: {eps: 1.0e-5, momentum: 0.1}
train_pipeline: rtmdet-tiny
backbone:
  - [-1, 1, InputNormalize, [[103.53, 116.28, 123.675], [57.375, 57.12, 58.395], bgr]]  # 0
  - [-1, 1, CSPNeXtStem, [4, 8]]              # 1 /2
  - [-1, 1, Conv, [16, 3, 2]]                 # 2 /4
  - [-1, 1, CSPLayer, [16, True, True]]       # 3
  - [-1, 1, Conv, [16, 3, 2]]                 # 4 /8
  - [-1, 1, CSPLayer, [16, True, True]]       # 5
  - [-1, 1, Conv, [32, 3, 2]]                 # 6 /16
  - [-1, 1, CSPLayer, [32, True, True]]       # 7
  - [-1, 1, Conv, [32, 3, 2]]                 # 8 /32
  - [-1, 1, SPPBottleneck, [32]]              # 9
  - [-1, 1, CSPLayer, [32, False, True]]      # 10
head:
  - [-1, 1, Conv, [32, 1, 1]]                 # 11
  - [-1, 1, nn.Upsample, [None, 2, nearest]]  # 12
  - [[-1, 7], 1, Concat, [1]]                 # 13
  - [-1, 1, CSPLayer, [32, False, False]]     # 14
  - [-1, 1, Conv, [16, 1, 1]]                 # 15
  - [-1, 1, nn.Upsample, [None, 2, nearest]]  # 16
  - [[-1, 5], 1, Concat, [1]]                 # 17
  - [-1, 1, CSPLayer, [16, False, False]]     # 18
  - [-1, 1, Conv, [16, 3, 2]]                 # 19
  - [[-1, 15], 1, Concat, [1]]                # 20
  - [-1, 1, CSPLayer, [32, False, False]]     # 21
  - [-1, 1, Conv, [32, 3, 2]]                 # 22
  - [[-1, 11], 1, Concat, [1]]                # 23
  - [-1, 1, CSPLayer, [32, False, False]]     # 24
  - [18, 1, Conv, [16, 3, 1]]                 # 25
  - [21, 1, Conv, [16, 3, 1]]                 # 26
  - [24, 1, Conv, [16, 3, 1]]                 # 27
  - [[25, 26, 27], 1, RTMDetSepBNHead, [nc, 16, 2, False]]  # 28
"""


@pytest.fixture(scope="session")
def rtmdet_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "rtmdet-micro.yaml"
    path.write_text(RTMDET_TINY_YAML)
    return path


@pytest.fixture
def rtmdet_settings(rtmdet_yaml, tiny_data, tmp_path) -> dict:
    """Trainer settings for a seconds-long deterministic CPU run of the micro RTMDet (the RTMDet recipe,
    with a learning rate for batch 4 and a short warmup)."""
    return {"model": str(rtmdet_yaml), "data": str(tiny_data), "imgsz": 64, "batch": 4, "epochs": 2, "workers": 0,
            "device": "cpu", "project": str(tmp_path / "runs"), "val": False, "plots": False, "verbose": False,
            "lr0": 2e-3, "lr_batch": 0, "warmup_iters": 1, "seed": 0, "deterministic": True, "recipe": "official"}
