"""The worked example of docs/extending.md: a module in the user's own file, used from a YAML."""

import importlib.util
import sys
import textwrap

import pytest
import torch

from rtdet import ModelConfigError, build_model
from rtdet.nn.registry import unregister

USER_FILE = textwrap.dedent(
    '''
    import torch
    import torch.nn as nn

    from rtdet import register


    @register(channels="same")
    class GatedResidual(nn.Module):
        def __init__(self, c1: int, k: int = 3):
            super().__init__()
            self.conv = nn.Conv2d(c1, c1, k, padding=k // 2, groups=c1)
            self.gate = nn.Parameter(torch.full((c1, 1, 1), -4.0))

        def forward(self, x):
            return x + torch.sigmoid(self.gate) * self.conv(x)
    '''
)

YAML = textwrap.dedent(
    """
    nc: 2
    backbone:
      - [-1, 1, Conv, [16, 3, 2]]
      - [-1, 1, GatedResidual, [5]]
    head:
      - [-1, 1, Conv, [32, 3, 2]]
    """
)


@pytest.fixture
def user_module(tmp_path):
    path = tmp_path / "my_blocks.py"
    path.write_text(USER_FILE)
    spec = importlib.util.spec_from_file_location("my_blocks", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["my_blocks"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("my_blocks", None)
    unregister("GatedResidual")


def test_yaml_fails_clearly_before_the_module_is_registered(tmp_path):
    (tmp_path / "m.yaml").write_text(YAML)
    with pytest.raises(ModelConfigError, match=r"row 1: unknown module 'GatedResidual'.*@rtdet.register"):
        build_model(tmp_path / "m.yaml")


def test_user_module_builds_from_yaml_with_inferred_channels(tmp_path, user_module):
    (tmp_path / "m.yaml").write_text(YAML)
    model = build_model(tmp_path / "m.yaml").eval()
    gated = model.model[1]
    assert type(gated).__name__ == "GatedResidual" and gated.conv.in_channels == 16
    assert gated.conv.kernel_size == (5, 5)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 32, 8, 8)
