import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("RTDET_TEST_THREADS", "2")))

SHARED = Path(__file__).resolve().parents[2] / "shared"
COCO128 = SHARED / "data" / "coco128-train"
COMMUNITY_YAML = SHARED / "reference" / "community-yaml"


@pytest.fixture
def coco128() -> Path:
    if not (COCO128 / "data.yaml").is_file():
        pytest.skip(f"{COCO128} not present")
    return COCO128


@pytest.fixture
def community_yaml() -> Path:
    if not COMMUNITY_YAML.is_dir():
        pytest.skip(f"{COMMUNITY_YAML} not present")
    return COMMUNITY_YAML


@pytest.fixture
def single_thread():
    """One torch thread for tests of tiny models, where a second thread only adds overhead."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
