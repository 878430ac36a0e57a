"""Errors the engine raises, and how the command line reports each kind (exit status, no traceback).

    exit 2    the command line or a setting is wrong: unknown verb or key, a value outside its schema, a
              required key missing (SettingsError, CLIError)
    exit 1    a file it names is missing, unreadable or invalid (model YAML, checkpoint, dataset, pipeline,
              image / video source), or the run failed (a NaN loss): USER_ERRORS
    exit 130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM, after last.pt was saved: Interrupted
    exit 141  the output pipe was closed (`rtdet ... | head`): BrokenPipeError, no message
"""

from __future__ import annotations

from rtdet.data import DataConfigError, PipelineConfigError
from rtdet.deploy.errors import ExportError
from rtdet.nn.builder import ModelConfigError
from rtdet.utils.checkpoint import CheckpointError

__all__ = ["Interrupted", "NonFiniteLossError", "RunRecordError", "RunsFailed", "SourceError", "USER_ERRORS"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the message names the epoch, the step and every loss term."""


class SourceError(ValueError):
    """A predict source that cannot be read: the message names the file and what OpenCV said."""


class RunRecordError(ValueError):
    """A record that rtdet keeps beside its runs (compare's plan.json) is damaged; the message names it."""


class RunsFailed(RuntimeError):
    """Some of compare's / tune's runs failed in their worker processes; the others finished and are kept."""


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal (SIGINT, SIGTERM) after saving; ``signum`` says which."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


USER_ERRORS: tuple[type[BaseException], ...] = (
    ModelConfigError,
    CheckpointError,
    DataConfigError,
    PipelineConfigError,
    SourceError,
    NonFiniteLossError,
    ExportError,
    RunRecordError,
    RunsFailed,
    OSError,  # FileNotFoundError, PermissionError, a full disk: the message names the path
)
