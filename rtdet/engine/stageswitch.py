"""D-FINE / DEIM's stage switch (``stage_switch=true``): when the augmentations and multi-scale stop, training
goes back to the best state of the run so far and keeps returning to it while the last epochs do not improve.

    switch = StageSwitch.from_settings(args)       # None when off
    switch.starts(epoch)                           # epoch round(multi_scale_stop x epochs): reload the best
    switch.after_epoch(epoch, fit, improved)       # True: reload the best again after this epoch

The official runs (D-FINE src/solver/det_solver.py fit, DEIM engine/solver/det_solver.py fit) reload
``best.pth``, the best checkpoint of the epochs before ``stop_epoch`` (model, EMA with its update count,
optimizer), at the start of epoch ``stop_epoch``; after each later epoch they compare its mAP with the best
since the last reload (at the switch: the best of stage one) and, when it is not higher, reload ``best.pth``
again and start the comparison afresh (the next epoch is then the best by definition). They also set
``ema.decay`` to ``ema_restart_decay`` and lower it by 1e-4 at each reload, but their ModelEMA computes the
decay from the value it was built with (``decay_fn = lambda x: decay * ...``, D-FINE src/optim/ema.py), so
the averaging never changes: rtdet keeps ``ema_decay`` throughout, as the official runs in effect do.

The trainer keeps stage one's best as ``weights/best_stage1.pt`` (written at the switch from ``best.pt``;
``best.pt`` itself goes on following the best epoch of the whole run) and records :meth:`state_dict` in
``last.pt``, so that a resumed run reloads exactly when the uninterrupted one would.
"""

from __future__ import annotations

__all__ = ["StageSwitch"]


class StageSwitch:
    """When to reload stage one's best state (see the module docstring). ``best``: the fitness to beat, the
    best since the last reload (None right after a reload: the next epoch sets it)."""

    def __init__(self, stop_epoch: int, epochs: int):
        self.stop_epoch, self.epochs = int(stop_epoch), int(epochs)
        self.best: float | None = None

    @classmethod
    def from_settings(cls, args: dict) -> StageSwitch | None:
        """From ``stage_switch`` / ``multi_scale_stop`` / ``epochs``; None when off or when the stop epoch
        leaves no epoch before or after it."""
        if not args.get("stage_switch"):
            return None
        epochs = int(args["epochs"])
        stop = round(float(args.get("multi_scale_stop") or 1.0) * epochs)
        return cls(stop, epochs) if 0 < stop < epochs else None

    def starts(self, epoch: int) -> bool:
        """Epoch ``epoch`` (0-based) is the first of stage two: reload stage one's best before training it."""
        return epoch == self.stop_epoch

    def switched(self, stage_one_best: float | None) -> None:
        """The reload at the switch is done; stage two's epochs are compared with stage one's best."""
        self.best = stage_one_best

    def after_epoch(self, epoch: int, fit: float, improved: bool) -> bool:
        """Whether to reload stage one's best after epoch ``epoch`` whose fitness is ``fit`` (``improved``: it
        is the best of the whole run, which is then also the best since the last reload)."""
        if epoch < self.stop_epoch:
            return False
        if improved or self.best is None or fit > self.best:
            self.best = fit
            return False
        self.best = None
        return True

    def state_dict(self) -> dict:
        return {"stop_epoch": self.stop_epoch, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = None if state.get("best") is None else float(state["best"])
