"""Settings: ``cfg/default.yaml`` < ``cfg/recipes/<family>.yaml`` < user arguments.

    defaults = default_settings()                 # every key, its default
    args = resolve_settings({"epochs": 3}, family="rtdetr")
    check_keys({"epoch": 3}, verb="train")        # SettingsError naming 'epoch', suggesting 'epochs'

Keys are those of default.yaml plus the loss settings of a family, which its criterion declares once
(``SETTINGS``: name, default, type, doc) and its head reports through ``criterion_settings()``. Before the
model is known any family's loss keys are accepted; once it is, only its own family's are, and a key of
another family is an error naming that family. A key that no file or criterion defines is an error, so
that a typo is never silently ignored. Recipes (``cfg/recipes/<family>.yaml``) only set values.
"""

from __future__ import annotations

import copy
import difflib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from rtdet.utils.schema import Setting

__all__ = [
    "CFG_DIR",
    "DEFAULT_CFG",
    "RECIPES_DIR",
    "SettingsError",
    "check_keys",
    "criterion_hyperparameters",
    "family_settings",
    "default_settings",
    "load_yaml",
    "parse_value",
    "recipe_settings",
    "resolve_settings",
    "valid_keys",
]

CFG_DIR = Path(__file__).resolve().parent.parent / "cfg"
DEFAULT_CFG = CFG_DIR / "default.yaml"
RECIPES_DIR = CFG_DIR / "recipes"

_EXP_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")  # 1e-4, 2.5E3


class SettingsError(ValueError):
    """A setting that does not exist or has an unusable value; the message says how to fix it."""


def load_yaml(path: str | Path) -> dict:
    """A YAML mapping read with yaml.safe_load, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"{path}: file not found")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SettingsError(f"{path}: not valid YAML ({e})") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise SettingsError(f"{path}: expected a mapping of settings, got {type(d).__name__}")
    return d


def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar (``3`` -> 3, ``true`` -> True, ``''`` / ``none`` -> None,
    ``[1,2]`` -> list).

    PyYAML reads ``1e-4`` as a string (YAML 1.1 floats need a dot); such numbers become floats here."""
    if text == "" or text.lower() == "none":  # Python's spelling of null, as users type it
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # e.g. a path with a colon: keep it verbatim
    if isinstance(value, str) and _EXP_NUMBER.match(value.strip()):
        return float(value)
    return value


@lru_cache(maxsize=1)
def _defaults() -> dict:
    return load_yaml(DEFAULT_CFG)


def default_settings() -> dict:
    """Every setting with its default (a fresh copy)."""
    return copy.deepcopy(_defaults())


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_settings(family: str | None) -> dict:
    """The family recipe's values (``cfg/recipes/<family>.yaml``); {} for no family, and for a family
    registered without a recipe (a user's own head: default.yaml and its criterion's defaults apply)."""
    if not family:
        return {}
    path = RECIPES_DIR / f"{family}.yaml"
    if not path.is_file():
        if family in family_settings():
            return {}
        raise SettingsError(
            f"no recipe for family '{family}' (looked for {path}); available: {', '.join(available_recipes())}"
        )
    return load_yaml(path)


def family_settings() -> dict[str, dict[str, Setting]]:
    """{family: {key: Setting}}: the loss settings of every registered head's family."""
    from rtdet.nn.registry import head_classes

    out: dict[str, dict[str, Setting]] = {}
    for cls in head_classes():
        family = getattr(cls, "family", "")
        if family:
            out.setdefault(family, {}).update({st.name: st for st in cls.criterion_settings()})
    return out


def valid_keys(family: str | None = None) -> set[str]:
    """default.yaml's keys plus the loss keys of ``family`` (of every family when None)."""
    keys = set(_defaults())
    for name, settings in family_settings().items():
        if family is None or name == family:
            keys.update(settings)
    return keys


def check_keys(overrides: dict, verb: str | None = None, family: str | None = None) -> None:
    """Raise SettingsError for a key that is not a setting (naming the closest valid keys), or, with
    ``family``, a loss key of another family (naming the family it belongs to)."""
    keys = valid_keys(family)
    bad = [k for k in overrides if k not in keys]
    if not bad:
        return
    owners = family_settings()
    lines = []
    for k in bad:
        other = sorted(f for f, settings in owners.items() if k in settings)
        if other:
            own = ", ".join(sorted(owners.get(family, {}))) or "none"
            lines.append(f"'{k}' is a loss setting of the {' / '.join(other)} family, but this model's head is "
                         f"{family}; its loss settings are: {own}.")
            continue
        close = difflib.get_close_matches(str(k), sorted(keys), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        lines.append(f"'{k}' is not a valid setting{f' for {verb}' if verb else ''}.{hint}")
    lines.append(f"Valid keys and their defaults are listed in {DEFAULT_CFG} (loss settings: `rtdet help`).")
    raise SettingsError("\n".join(lines))


def criterion_hyperparameters(args: dict, head) -> dict:
    """The values of the settings the head's criterion declares, from resolved settings."""
    return {st.name: args[st.name] for st in head.criterion_settings() if st.name in args}


def resolve_settings(overrides: dict | None = None, family: str | None = None, verb: str | None = None) -> dict:
    """default.yaml < the family's loss defaults < its recipe < ``overrides``; unknown keys (or another
    family's loss keys) raise SettingsError."""
    overrides = dict(overrides or {})
    check_keys(overrides, verb, family)
    args = default_settings()
    if family:
        args.update({k: st.default for k, st in family_settings().get(family, {}).items()})
        recipe = recipe_settings(family)
        stray = sorted(set(recipe) - valid_keys(family))
        if stray:
            raise SettingsError(f"{RECIPES_DIR / (family + '.yaml')}: keys {stray} are not settings of default.yaml "
                                f"or of the {family} loss")
        args.update(recipe)
    args.update(overrides)
    for k, v in args.items():  # numbers written as '1e-4' in a YAML file are strings to PyYAML
        if isinstance(v, str) and _EXP_NUMBER.match(v.strip()):
            args[k] = float(v)
    return args


def check_imgsz(args: dict, model) -> int:
    """Round ``args["imgsz"]`` up to a multiple of the model's largest stride, with a warning: the neck
    upsamples one map and concatenates it with the next, so every level must halve evenly (what
    Ultralytics' check_imgsz does too). Returns the size used."""
    from rtdet.utils.logging import LOGGER

    stride = max(model.strides)
    imgsz = int(args["imgsz"])
    fixed = max(stride, -(-imgsz // stride) * stride)
    if fixed != imgsz:
        LOGGER.warning(f"imgsz={imgsz} is not a multiple of the model's largest stride {stride}; using imgsz={fixed}")
        args["imgsz"] = fixed
    return fixed
