"""Loss terms kept on the device during an epoch and read on the host only every ``log_every`` batches.

Reading a CUDA tensor on the host (``float(t)``, ``t.item()``, ``t.tolist()``) waits for every queued kernel:
one such read per loss term per batch keeps the GPU idle between steps. The meter sums the terms on the
device and copies them to the host in one read when a log step is due (and at the end of the epoch)::

    meter = LossMeter(every=10)
    for i, batch in enumerate(loader):
        loss, terms = trainer.train_step(batch)   # detached device tensors
        meter.update(loss, terms)                 # no host sync
        window = meter.read(i, len(loader))       # {"loss": ..., term: ...} every 10th batch, else None
    means = meter.epoch_means()                   # {term: mean over the epoch}, one host sync

:func:`to_host` is the one place the training loop copies device values to the host; tests count the calls.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["LossMeter", "learning_rates", "to_host"]


def to_host(t: torch.Tensor) -> Any:
    """``t`` as Python numbers (a scalar, or nested lists): a host sync on CUDA. Every read of training values
    by the trainer goes through here, so that their number per step is known (and tested)."""
    return t.tolist()


class LossMeter:
    """Running sums of the total loss and its terms, on the device; ``every`` batches per host read."""

    def __init__(self, every: int = 10):
        self.every = max(int(every), 1)
        self.names: list[str] = []
        self.epoch_sum: torch.Tensor | None = None  # [terms]: sum over the epoch's batches
        self.window_sum: torch.Tensor | None = None  # [1 + terms]: total loss and terms since the last read
        self.count = self.window_count = 0

    def update(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Add one batch's loss (a scalar tensor) and terms ({name: scalar tensor}) to the sums, on their device."""
        values = torch.stack([torch.as_tensor(v).detach().float().reshape(()) for v in (loss, *terms.values())])
        if self.epoch_sum is None:
            self.names = list(terms)
            self.epoch_sum = torch.zeros_like(values[1:])
            self.window_sum = torch.zeros_like(values)
        self.epoch_sum += values[1:]
        self.window_sum += values
        self.count += 1
        self.window_count += 1

    def due(self, i: int, n: int) -> bool:
        """Whether batch ``i`` (0-based) of ``n`` ends a log window: every ``every``-th batch, and the last."""
        return (i + 1) % self.every == 0 or i + 1 == n

    def read(self, i: int, n: int) -> dict[str, float] | None:
        """Mean total loss and terms over the batches since the last read, when batch ``i`` ends a window
        (one host sync); None otherwise."""
        if not self.due(i, n) or not self.window_count:
            return None
        means = to_host(self.window_sum / self.window_count)
        self.window_sum.zero_()
        self.window_count = 0
        return dict(zip(["loss", *self.names], means, strict=True))

    def state_dict(self) -> dict:
        """The epoch's sums so far (a checkpoint inside an epoch carries them: a resumed run's epoch means, and
        the best epoch chosen by training loss, are those of the whole epoch)."""
        return {"names": list(self.names), "count": self.count,
                "sum": None if self.epoch_sum is None else self.epoch_sum.detach().cpu().clone()}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        """Continue the epoch whose sums :meth:`state_dict` saved (the window starts afresh)."""
        if state.get("sum") is None:
            return
        self.names, self.count = list(state["names"]), int(state["count"])
        self.epoch_sum = torch.as_tensor(state["sum"]).to(device)
        self.window_sum = torch.zeros(len(self.names) + 1, dtype=self.epoch_sum.dtype, device=device)

    def epoch_means(self) -> dict[str, float]:
        """Mean of every term over the batches seen this epoch (one host sync); {} before any batch."""
        if not self.count:
            return {}
        return dict(zip(self.names, to_host(self.epoch_sum / self.count), strict=True))


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """{"lr/backbone": lr, "lr/head": lr}: the first group of each part (groups are named by the optimizer
    builder; decayed weights first), the same columns as results.csv."""
    out: dict[str, float] = {}
    for g in optimizer.param_groups:
        part = "backbone" if str(g.get("name", "")).startswith("backbone") else "head"
        out.setdefault(f"lr/{part}", float(g["lr"]))
    return out
