"""Errors the engine raises, and the set of errors that are the user's to fix (shown without traceback)."""

from __future__ import annotations

from rtdet.data import DataConfigError, PipelineConfigError
from rtdet.engine.exporter import ExportError
from rtdet.engine.settings import SettingsError
from rtdet.nn.builder import ModelConfigError
from rtdet.utils.checkpoint import CheckpointError

__all__ = ["NonFiniteLossError", "USER_ERRORS"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the message names the epoch, the step and every loss term."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    SettingsError,
    ModelConfigError,
    CheckpointError,
    DataConfigError,
    PipelineConfigError,
    FileNotFoundError,
    NonFiniteLossError,
    ExportError,
)
