"""One setting's schema: its name, default, type, allowed range or choices, and a one-line doc.

    lr = Setting("lr0", 0.01, float, "base learning rate", low=0.0, low_open=True)
    lr.check(0.001)          # -> 0.001
    lr.check("abc")          # SettingError: lr0='abc': expected a number > 0 ...

``check`` accepts the value as the user wrote it (a YAML scalar from the command line, or a Python
value from the API), returns it converted to the declared type, and raises :class:`SettingError` with
one line naming the key, the value and what is allowed. Booleans are strict: only true/false (YAML's
spellings of them) are booleans, and ``maybe`` is an error rather than a truthy string. Numbers must be
finite; an int setting takes a float only when it is whole (``3.0``), never a string.

A setting whose default is empty may declare a default per verb (``verbs``: the score threshold ``conf``
is 0.001 for ``val``, which ranks every box, and 0.25 for ``predict``); :meth:`Setting.verb_default` reads
it, and the engine's settings resolver puts it in place of an empty value. Each is checked like the default.

A setting may accept several kinds (``kind=(bool, str)``: ``resume=true`` or ``resume=path/to/last.pt``);
the first kind that fits wins. ``validate`` adds a check the type cannot express (a device that must
exist); it returns the (normalised) value or raises ``ValueError`` saying why.

Criteria declare their settings once as a tuple of ``Setting`` (``SETTINGS``); the engine's own settings
are declared in ``rtdet/cfg/default.yaml``, whose entries :meth:`Setting.from_mapping` reads (the format
is described at the top of that file).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["SCHEMA_FIELDS", "Setting", "SettingError", "parse_range"]

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping"}
SCHEMA_FIELDS = ("default", "type", "range", "choices", "doc", "verbs")
_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")


class SettingError(ValueError):
    """A setting value outside its declared type, range or choices (the message is one line)."""


@dataclass(frozen=True)
class Setting:
    """Schema of one setting.

    ``kind`` is bool, int, float, str, list or dict, or a tuple of them; ``nullable`` allows an empty
    value (None, or ''), which then means what ``doc`` says (e.g. "empty = the family's choice"). ``low``
    / ``high`` bound numbers (inclusive unless ``low_open`` / ``high_open``); ``choices`` lists the
    allowed strings (matched case-insensitively, returned in the declared spelling). ``label`` replaces
    the type's name in messages ("a path"); ``validate`` is an extra check (see the module docstring).
    """

    name: str
    default: Any
    kind: type | tuple[type, ...]
    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    label: str | None = None
    validate: Callable[[Any], Any] | None = None
    verbs: tuple[tuple[str, Any], ...] = ()  # ((verb, its default), ...) for a key whose default is empty

    def verb_default(self, verb: str | None) -> Any:
        """The value that an empty setting takes for ``verb`` (None when the verb declares none)."""
        return dict(self.verbs).get(verb)

    @property
    def kinds(self) -> tuple[type, ...]:
        return self.kind if isinstance(self.kind, tuple) else (self.kind,)

    def allowed(self) -> str:
        """What the setting accepts, in words ("an integer >= 1", "one of SGD, AdamW")."""
        if self.choices:
            text = f"one of {', '.join(self.choices)}"
        elif self.label:
            text = self.label
        else:
            text = ", or ".join(_TYPE_NAMES.get(k, k.__name__) for k in self.kinds)
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '>='} {_fmt(self.low)}")
            if self.high is not None:
                bounds.append(f"{'<' if self.high_open else '<='} {_fmt(self.high)}")
            if bounds:
                text += " " + " and ".join(bounds)
        return text + (", or empty" if self.nullable else "")

    def check(self, value: Any) -> Any:
        """``value`` converted to the declared type; SettingError when it does not fit."""
        if value is None or (isinstance(value, str) and value.strip() == ""):
            if self.nullable:
                return None
            raise self._error(value)
        for kind in self.kinds:
            ok, converted = self._convert(kind, value)
            if ok:
                break
        else:
            raise self._error(value)
        if self.validate is not None:
            try:
                converted = self.validate(converted)
            except ValueError as e:
                raise SettingError(f"{self.name}={_shown(value)}: {e}") from None
        return converted

    def _convert(self, kind: type, value: Any) -> tuple[bool, Any]:
        """(fits, converted value) for one of the setting's kinds."""
        if kind is bool:
            return isinstance(value, bool), value
        if kind in (int, float):
            return self._convert_number(kind, value)
        if kind is str:
            if isinstance(value, bool) or not isinstance(value, str | int | float | os.PathLike):
                return False, value
            text = str(value)
            if self.choices:
                by_lower = {c.lower(): c for c in self.choices}
                if text.lower() not in by_lower:
                    return False, value
                return True, by_lower[text.lower()]
            return True, text
        if kind is list:
            return isinstance(value, list | tuple), list(value) if isinstance(value, list | tuple) else value
        return isinstance(value, kind), value

    def _convert_number(self, kind: type, value: Any) -> tuple[bool, Any]:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False, value
        if isinstance(value, float) and not math.isfinite(value):
            return False, value
        if kind is int:
            if isinstance(value, float):
                if not value.is_integer():
                    return False, value
                value = int(value)
        else:
            value = float(value)
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False, value
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False, value
        return True, value

    def _error(self, value: Any) -> SettingError:
        return SettingError(f"{self.name}={_shown(value)}: expected {self.allowed()} -- {self.doc}")

    # ------------------------------------------------------------------ from a schema file
    @classmethod
    def from_mapping(cls, name: str, entry: Any, types: dict[str, dict], where: str) -> Setting:
        """A Setting from one block of a schema file (``{default, type, range, choices, doc}``).

        ``types`` maps each type name to the keyword arguments it stands for (``{"path": {"kind": str,
        "label": "a path"}}``). A malformed entry, or a default that its own schema refuses, raises
        SettingError naming ``where`` and the key."""
        if not isinstance(entry, dict):
            raise SettingError(f"{where}: '{name}: {entry}' is not a schema block; write it as a mapping with "
                               f"{', '.join(SCHEMA_FIELDS)} (the format is described at the top of the file)")
        extra = sorted(set(entry) - set(SCHEMA_FIELDS))
        missing = [k for k in ("type", "doc") if not entry.get(k)] + ([] if "default" in entry else ["default"])
        if extra or missing:
            raise SettingError(f"{where}: '{name}': " + "; ".join(
                ([f"unknown fields {extra}"] if extra else []) + ([f"missing fields {missing}"] if missing else []))
                + f" (fields: {', '.join(SCHEMA_FIELDS)})")
        type_names = entry["type"] if isinstance(entry["type"], list) else [entry["type"]]
        unknown = [t for t in type_names if t not in types]
        if unknown:
            raise SettingError(f"{where}: '{name}': unknown type {unknown[0]!r}; types: {', '.join(types)}")
        parts = [types[t] for t in type_names]
        kinds = tuple(p["kind"] for p in parts)
        kw: dict[str, Any] = {"kind": kinds[0] if len(kinds) == 1 else kinds}
        labels = [p.get("label") or _TYPE_NAMES.get(p["kind"], p["kind"].__name__) for p in parts]
        if any(p.get("label") for p in parts):
            kw["label"] = ", or ".join(labels)
        validators = [p["validate"] for p in parts if p.get("validate")]
        if len(validators) > 1:
            raise SettingError(f"{where}: '{name}': at most one checked type ({', '.join(type_names)})")
        if validators:
            kw["validate"] = validators[0]
        if entry.get("range") is not None:
            if not set(kinds) & {int, float}:
                raise SettingError(f"{where}: '{name}': 'range' applies to numbers only (type {entry['type']})")
            try:
                kw.update(parse_range(entry["range"]))
            except ValueError as e:
                raise SettingError(f"{where}: '{name}': {e}") from None
        if entry.get("choices") is not None:
            choices = entry["choices"]
            if kinds != (str,) or not isinstance(choices, list) or not choices:
                raise SettingError(f"{where}: '{name}': 'choices' must be a non-empty list for a str key")
            kw["choices"] = tuple(str(c) for c in choices)
        doc = str(entry["doc"]).strip()
        if "\n" in doc:
            raise SettingError(f"{where}: '{name}': doc must be one line")
        setting = cls(name, entry["default"], doc=doc, nullable=entry["default"] is None, **kw)
        if setting.default is not None:
            try:
                object.__setattr__(setting, "default", setting.check(setting.default))
            except SettingError as e:
                raise SettingError(f"{where}: the default of '{name}' does not fit its own schema: {e}") from None
        if entry.get("verbs") is not None:
            object.__setattr__(setting, "verbs", setting._checked_verbs(entry["verbs"], where))
        return setting

    def _checked_verbs(self, verbs: Any, where: str) -> tuple[tuple[str, Any], ...]:
        """A schema block's ``verbs`` ({verb: default}), each value checked against the setting's own schema."""
        if not isinstance(verbs, dict) or not verbs:
            raise SettingError(f"{where}: '{self.name}': 'verbs' must be a mapping of verb: default, "
                               f"e.g. {{val: 0.001}}")
        if self.default is not None:
            raise SettingError(f"{where}: '{self.name}': 'verbs' applies to a key whose default is empty (what an "
                               f"empty value means for each verb); this one defaults to {self.default!r}")
        out = []
        for verb, value in verbs.items():
            try:
                out.append((str(verb), self.check(value)))
            except SettingError as e:
                raise SettingError(f"{where}: the {verb} default of '{self.name}' does not fit its own schema: {e}") \
                    from None
        return tuple(out)


def parse_range(text: Any) -> dict[str, Any]:
    """Keyword arguments of Setting for an interval: ``"[0, 1)"`` -> low=0, high=1, high_open=True;
    ``inf`` / ``-inf`` leave a side unbounded."""
    m = _INTERVAL.match(str(text))
    if not m:
        raise ValueError(f"range {text!r} is not an interval such as \"[0, 1]\", \"(0, 1]\" or \"[1, inf)\"")
    left, lo, hi, right = m.groups()
    try:
        low, high = float(lo), float(hi)
    except ValueError:
        raise ValueError(f"range {text!r}: bounds must be numbers or inf") from None
    if low > high:
        raise ValueError(f"range {text!r}: the lower bound is above the upper one")
    return {"low": None if math.isinf(low) else low, "high": None if math.isinf(high) else high,
            "low_open": left == "(" and not math.isinf(low), "high_open": right == ")" and not math.isinf(high)}


def _shown(value: Any) -> str:
    if value is None:
        return "''"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
