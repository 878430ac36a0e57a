"""Loss meter: sums on the device, host reads every log_every batches; the trainer reads device values on the
host only through meters.to_host, a known number of times per step."""

import sys

import pytest
import torch

import rtdet.engine.meters as meters
import rtdet.engine.trainer as trainer_module
from rtdet.engine.meters import LossMeter, learning_rates
from rtdet.engine.trainer import Trainer


def test_meter_reads_window_means_every_n_batches_and_epoch_means_at_the_end():
    meter = LossMeter(every=2)
    reads = []
    for i in range(5):
        meter.update(torch.tensor(float(i)), {"a": torch.tensor(2.0 * i), "b": torch.tensor(1.0)})
        reads.append(meter.read(i, 5))
    assert reads[0] is None and reads[2] is None
    assert reads[1] == {"loss": 0.5, "a": 1.0, "b": 1.0}  # batches 0-1
    assert reads[3] == {"loss": 2.5, "a": 5.0, "b": 1.0}  # batches 2-3
    assert reads[4] == {"loss": 4.0, "a": 8.0, "b": 1.0}  # the last batch ends a window
    assert meter.epoch_means() == {"a": 4.0, "b": 1.0}
    assert LossMeter().epoch_means() == {}


def test_learning_rates_are_named_like_the_csv_columns():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w], "lr": 0.1, "name": "backbone.decay"},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.2, "name": "head.decay"}])
    assert learning_rates(opt) == {"lr/backbone": 0.1, "lr/head": 0.2}


@pytest.mark.parametrize("log_every", [1, 3])
def test_training_reads_device_values_only_through_to_host(tiny_settings, monkeypatch, log_every):
    """Per batch one read (the NaN check before the update), one per log window, one per epoch (the epoch's
    means); no float() / item() / bool() of a tensor anywhere else in the trainer (a read per loss term per
    step would stall a GPU)."""
    counts = {"to_host": 0, "elsewhere": 0}
    real = meters.to_host

    def counting(t):
        counts["to_host"] += 1
        return real(t)

    monkeypatch.setattr(meters, "to_host", counting)
    monkeypatch.setattr(trainer_module, "to_host", counting)
    for name in ("__float__", "__int__", "__bool__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, **kwargs):
            if sys._getframe(1).f_code.co_filename == trainer_module.__file__:
                counts["elsewhere"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    epochs, batches = 2, 4  # 8 images, batch 2
    trainer = Trainer({**tiny_settings, "epochs": epochs, "batch": 2, "log_every": log_every, "loggers": "csv"})
    trainer.train()
    windows = sum(1 for i in range(batches) if (i + 1) % log_every == 0 or i + 1 == batches)
    assert counts == {"to_host": epochs * (batches + windows + 1), "elsewhere": 0}
