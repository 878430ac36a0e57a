"""One setting's schema: its name, default, type, allowed range or choices, and a one-line doc.

    lr = Setting("lr0", 0.01, float, "base learning rate", low=0.0, low_open=True)
    lr.check(0.001)          # -> 0.001
    lr.check("abc")          # SettingError: lr0='abc': expected a number > 0 ...

``check`` accepts the value as the user wrote it (a YAML scalar from the command line, or a Python
value from the API), returns it converted to the declared type, and raises :class:`SettingError` with
one line naming the key, the value and what is allowed. Booleans are strict: only true/false (YAML's
spellings of them) are booleans, and ``maybe`` is an error rather than a truthy string.

Criteria declare their settings once as a tuple of ``Setting`` (``SETTINGS``); the engine's own settings
are declared in ``rtdet/cfg/default.yaml`` and turned into ``Setting`` objects by the settings module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Setting", "SettingError"]

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


class SettingError(ValueError):
    """A setting value outside its declared type, range or choices (the message is one line)."""


@dataclass(frozen=True)
class Setting:
    """Schema of one setting.

    ``kind`` is bool, int, float, str or list; ``nullable`` allows an empty value (None), which then
    means what ``doc`` says (e.g. "empty = the family's choice"). ``low`` / ``high`` bound numbers
    (inclusive unless ``low_open`` / ``high_open``); ``choices`` lists the allowed strings (matched
    case-insensitively, returned in the declared spelling).
    """

    name: str
    default: Any
    kind: type
    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    nullable: bool = False

    def allowed(self) -> str:
        """What the setting accepts, in words ("an integer >= 1", "one of SGD, AdamW")."""
        if self.choices:
            text = f"one of {', '.join(self.choices)}"
        else:
            text = _TYPE_NAMES.get(self.kind, self.kind.__name__)
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '>='} {_fmt(self.low)}")
            if self.high is not None:
                bounds.append(f"{'<' if self.high_open else '<='} {_fmt(self.high)}")
            if bounds:
                text += " " + " and ".join(bounds)
        return text + (" (or empty)" if self.nullable else "")

    def check(self, value: Any) -> Any:
        """``value`` converted to the declared type; SettingError when it does not fit."""
        if value is None or (isinstance(value, str) and value == "" and self.kind is not str):
            if self.nullable:
                return None
            raise self._error(value)
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            raise self._error(value)
        if self.kind in (int, float):
            return self._check_number(value)
        if self.kind is str:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise self._error(value)
            text = str(value)
            if self.choices:
                by_lower = {c.lower(): c for c in self.choices}
                if text.lower() not in by_lower:
                    raise self._error(value)
                return by_lower[text.lower()]
            return text
        if self.kind is list:
            if isinstance(value, list | tuple):
                return list(value)
            raise self._error(value)
        if not isinstance(value, self.kind):
            raise self._error(value)
        return value

    def _check_number(self, value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._error(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise self._error(value)
        if self.kind is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise self._error(value)
                value = int(value)
        else:
            value = float(value)
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise self._error(value)
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise self._error(value)
        return value

    def _error(self, value: Any) -> SettingError:
        shown = "" if value is None else value
        return SettingError(f"{self.name}={shown!r}: expected {self.allowed()} ({self.doc})")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
