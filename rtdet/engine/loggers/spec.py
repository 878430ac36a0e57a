"""The logging settings: ``loggers=`` and ``tags=`` parsed and checked (the settings schema calls these), and
the settings of one run of a group (``compare`` / ``tune``). Nothing here starts a tracker."""

from __future__ import annotations

from typing import Any

from rtdet.engine.loggers.backends import BACKENDS

__all__ = ["NAMES", "SPECIAL", "grouped", "parse_loggers", "parse_tags"]

NAMES = ("csv", *BACKENDS)  # csv: results.csv, which the trainer always writes
SPECIAL = ("auto",)  # csv + tensorboard when it is installed


def parse_loggers(value: Any) -> list[str]:
    """The ``loggers`` setting as a list of names: a list, or text separated by commas (``tensorboard,mlflow``).
    Raises ValueError naming an unknown entry."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    names = [str(v).strip().lower() for v in items if str(v).strip()]
    for n in names:
        if n not in (*NAMES, *SPECIAL):
            raise ValueError(f"unknown logger {n!r}; expected a list of {', '.join(NAMES)}, or auto (csv only: "
                             f"loggers=csv)")
    return list(dict.fromkeys(names)) or ["csv"]


def parse_tags(value: Any) -> dict[str, str] | None:
    """The ``tags`` setting as {key: value}: a mapping, or text ``variant=dysample,seed=1``."""
    if value is None or value == {}:
        return None
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    pairs = [p for p in str(value).split(",") if p.strip()]
    out = {}
    for p in pairs:
        key, sep, val = p.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{p.strip()!r} is not key=value; write tags as variant=dysample,seed=1 "
                             f"or {{variant: dysample, seed: 1}}")
        out[key.strip()] = val.strip()
    return out or None


def grouped(settings: dict, experiment: str, **tags) -> dict:
    """The settings of one run of a group (a ``compare`` variant and seed, a ``tune`` trial): every run logs
    into one experiment -- the user's ``experiment=``, else the group's name -- tagged with what sets it apart
    (``variant`` and ``seed``; ``trial``) on top of the user's own ``tags=``, so a tracker can chart the seeds
    of a variant together."""
    own = parse_tags(settings.get("tags")) or {}
    return {**settings, "experiment": settings.get("experiment") or experiment,
            "tags": {**own, **{k: str(v) for k, v in tags.items()}}}
