"""Helpers of the engine tests that interrupt a training run."""

import os
import signal
from pathlib import Path

import pytest

from rtdet.engine.trainer import Trainer


def train_until_ctrl_c(trainer: Trainer, stop_at: tuple[int, int]) -> Path:
    """Train ``trainer`` until a real SIGINT (as a terminal sends it) after batch ``stop_at`` = (epoch,
    batch); the run must stop saying it saved. Returns its ``weights/last.pt``."""

    def ctrl_c(t: Trainer) -> None:
        if (t.epoch, t.batch_index) == stop_at:
            os.kill(os.getpid(), signal.SIGINT)

    trainer.add_callback("on_train_batch_end", ctrl_c)
    with pytest.raises(KeyboardInterrupt, match="saved"):
        trainer.train()
    return trainer.save_dir / "weights" / "last.pt"
