"""Settings: ``cfg/default.yaml`` < the family's recipe < user arguments, each value checked.

    defaults = default_settings()                 # every key, its default
    args = resolve_settings({"epochs": 3}, family="rtdetr")
    check_settings({"epochs": "abc"})             # SettingsError: epochs='abc': expected an integer >= 1 ...
    check_keys({"epoch": 3}, verb="train")        # SettingsError naming 'epoch', suggesting 'epochs'

``default.yaml`` is the schema of the engine's settings: for every key its default, type, range or choices
and a one-line doc (the format is described at the top of the file), read into :class:`Setting` objects,
the one checker of every value. The loss settings of a family are declared once by its criterion
(``SETTINGS``) and found through the family's record (:mod:`rtdet.families`). Before the model is known any family's
loss keys are accepted; once it is, only its own family's are, and a key of another family is an error
naming that family. A key that no file or criterion defines is an error, so that a typo is never silently
ignored. Recipes (the record's ``recipe`` file) only set values, and those are checked too.

Every entry point (CLI, ``Detector``, ``Trainer``, ``Validator``, ``Predictor``) checks the values it is
given with :func:`check_settings` / :func:`resolve_settings` before it does any work or makes a run folder.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch.nn as nn
import yaml

from rtdet.data.pipelines import build_pipeline, load_pipeline_spec, named_pipelines
from rtdet.data.transforms import PipelineConfigError
from rtdet.engine.freeze import parse_freeze
from rtdet.engine.loggers import parse_loggers, parse_tags
from rtdet.engine.multiscale import parse_multi_scale
from rtdet.engine.rundir import check_run_name
from rtdet.families import families, get_family
from rtdet.utils.checkpoint import CheckpointError
from rtdet.utils.logging import LOGGER
from rtdet.utils.schema import Setting, SettingError
from rtdet.utils.torch_utils import cap_threads
from rtdet.utils.yaml_file import read_yaml

__all__ = [
    "CFG_DIR",
    "settings_file",
    "plain_settings",
    "yaml_number",
    "apply_cfg",
    "DEFAULT_CFG",
    "SettingsError",
    "check_device",
    "check_half",
    "check_imgsz",
    "check_keys",
    "check_settings",
    "criterion_hyperparameters",
    "default_settings",
    "describe_settings",
    "family_settings",
    "load_yaml",
    "parse_value",
    "cfg_path",
    "read_recipe",
    "recipe_path",
    "recipe_settings",
    "size_recipes",
    "sized_recipe",
    "resolve_settings",
    "schema",
    "valid_keys",
    "verb_defaults",
    "with_verb_defaults",
]

CFG_DIR = Path(__file__).resolve().parent.parent / "cfg"
DEFAULT_CFG = CFG_DIR / "default.yaml"

_EXP_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")  # 1e-4, 2.5E3

# A setting that does not exist or has an unusable value; the message (one line per problem) says how to
# fix it. The same class as the schema's SettingError: one error for every bad setting.
SettingsError = SettingError


def load_yaml(path: str | Path) -> dict:
    """A YAML mapping read with yaml.safe_load, with errors that name the file."""
    path = Path(path)
    d = read_yaml(path, SettingsError)
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise SettingsError(f"{path}: expected a mapping of settings, got {type(d).__name__}")
    return d


def plain_settings(value: Any) -> Any:
    """Settings as plain types (checkpoints and args.yaml): paths -> str, models -> their name."""
    if isinstance(value, dict):
        return {str(k): plain_settings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_settings(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, nn.Module):
        return getattr(value, "name", type(value).__name__)
    return value


def yaml_number(value: Any) -> Any:
    """PyYAML reads ``1e-4`` (no dot: not a YAML 1.1 float) as a string; such numbers become floats."""
    if isinstance(value, str) and _EXP_NUMBER.match(value.strip()):
        return float(value)
    return value


def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar (``3`` -> 3, ``true`` -> True, ``''`` / ``none`` -> None,
    ``[1,2]`` -> list, ``1e-4`` -> 0.0001)."""
    if text == "" or text.lower() == "none":  # Python's spelling of null, as users type it
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # e.g. a path with a colon: keep it verbatim
    return yaml_number(value)


# ---------------------------------------------------------------------------------------- the schema
def check_device(value: str) -> str:
    """A device string that exists on this machine: '' / auto, cpu, mps, a GPU index (0, cuda, cuda:1) or a
    list of them (0,1); GPUs must be visible. Returns the normalised spelling ('cuda:1' -> '1')."""
    text = str(value).strip().lower().replace(" ", "")
    if text in ("", "auto"):
        return ""
    if text in ("cpu", "mps"):
        if text == "mps":
            import torch

            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                raise ValueError("asks for Apple's MPS, which is not available here; use device=cpu")
        return text
    parts = ["0" if p == "cuda" else p.removeprefix("cuda:") for p in text.split(",") if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError("expected empty (auto), cpu, a GPU index such as 0, or a list of GPUs such as 0,1")
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"asks for a GPU, but CUDA is not available on this machine (torch {torch.__version__}); "
                         f"use device=cpu")
    n = torch.cuda.device_count()
    missing = [p for p in parts if int(p) >= n]
    if missing:
        raise ValueError(f"GPU {missing[0]} does not exist ({n} visible: {', '.join(map(str, range(n)))})")
    return ",".join(parts)


def check_freeze(value):
    """A ``freeze=`` spec of the right form (rtdet.engine.freeze.parse_freeze), normalised."""
    return parse_freeze(value)


_PRECISIONS = {"fp16": "fp16", "float16": "fp16", "half": "fp16", "bf16": "bf16", "bfloat16": "bf16"}


def check_precision(value: bool | str) -> bool | str:
    """``amp=``: true / false, or ``fp16`` / ``bf16`` (also float16, half, bfloat16). Returns the bool
    unchanged or the canonical string; ValueError for anything else (rtdet/engine/amp.py uses it)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _PRECISIONS:
        raise ValueError("expected true, false, fp16 or bf16 (mixed precision on CUDA; bf16 needs a GPU that "
                         "supports it, e.g. Ampere or newer)")
    return _PRECISIONS[text]


# What each `type:` name of default.yaml means (keyword arguments of Setting).
SCHEMA_TYPES: dict[str, dict] = {
    "bool": {"kind": bool},
    "int": {"kind": int},
    "float": {"kind": float},
    "str": {"kind": str},
    "path": {"kind": str, "label": "a path"},
    "list": {"kind": list},
    "dict": {"kind": dict},
    "device": {"kind": str, "label": "a device (cpu, 0, 0,1)", "validate": check_device},
    "folder_name": {"kind": str, "label": "a folder name", "validate": check_run_name},  # engine/rundir.py: why
    # Checked by their own modules' parsers, which accept several spellings (a list, or text).
    "loggers": {"kind": object, "label": "a list of tensorboard, mlflow, wandb, csv, or auto",
                "validate": parse_loggers},
    "tags": {"kind": object, "label": "key=value pairs", "validate": parse_tags},
    "scale_range": {"kind": object, "label": "a range of factors such as 0.5-1.5, or true / false",
                    "validate": parse_multi_scale},
    "threads": {"kind": int, "validate": cap_threads},
    "freeze": {"kind": str, "label": "rows (0-10, 0,3,5-7) or parts (backbone, neck, head, transplanted)",
               "validate": check_freeze},
    "precision": {"kind": str, "label": "fp16 or bf16", "validate": check_precision},
}


@lru_cache(maxsize=1)
def _schema() -> dict[str, Setting]:
    raw = load_yaml(DEFAULT_CFG)
    out = {}
    for name, entry in raw.items():
        if isinstance(entry, dict) and "default" in entry:
            entry = {**entry, "default": yaml_number(entry["default"])}
        out[str(name)] = Setting.from_mapping(str(name), entry, SCHEMA_TYPES, str(DEFAULT_CFG))
    return out


def schema(family: str | None = None) -> dict[str, Setting]:
    """{key: Setting}: default.yaml's settings plus the loss settings of ``family`` (of every family when
    None; a key declared by several families is checked with the first)."""
    out = dict(_schema())
    for name, settings in family_settings().items():
        if family is None or name == family:
            for k, st in settings.items():
                out.setdefault(k, st)
    return out


def default_settings() -> dict:
    """Every setting of default.yaml with its default (a fresh copy)."""
    return {k: copy.deepcopy(st.default) for k, st in _schema().items()}


def available_recipes() -> list[str]:
    """The families that ship a recipe."""
    return sorted(name for name, family in families().items() if family.recipe is not None)


# ---------------------------------------------------------------------------------------- recipe sizes
# A recipe may come in model sizes: ``dfine.yaml`` declares ``recipe_size: s`` (the size its values are for)
# and ``dfine-l.yaml`` beside it declares ``recipe_size: l``. In a settings file the key is that declaration,
# read here and never merged into the settings; on the command line ``recipe_size=`` chooses the size.
SIZE_ORDER = "nsmlx"


def read_recipe(path: str | Path) -> tuple[dict, str | None]:
    """(settings, declared size or None) of a recipe or settings file: its ``recipe_size:`` is taken out."""
    values = {k: yaml_number(v) for k, v in load_yaml(path).items()}
    size = values.pop("recipe_size", None)
    return values, None if size in (None, "") else str(size)


def size_recipes(path: str | Path) -> dict[str, Path]:
    """{size: file} of the size recipes beside ``path``: each ``<stem>-<size>.yaml`` that declares
    ``recipe_size: <size>`` (``deim-l.yaml`` beside ``deim.yaml``; ``deim-rtv2.yaml``, which declares none,
    is another recipe, not a size)."""
    path = Path(path)
    out = {}
    for p in sorted(path.parent.glob(f"{path.stem}-*.yaml")):
        size = p.stem[len(path.stem) + 1:]
        if read_recipe(p)[1] == size:
            out[size] = p
    return out


def _size_key(size: str) -> tuple[int, list]:
    """n, s, m, l, x in that order, then other names with their numbers compared as numbers (r18 before r101)."""
    rank = SIZE_ORDER.index(size) if len(size) == 1 and size in SIZE_ORDER else len(SIZE_ORDER)
    return rank, [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", size) if part]


def sized_recipe(path: str | Path, size: str | None, where: str = "the model") -> Path:
    """The file that holds ``path``'s recipe for model size ``size``: ``<stem>-<size>.yaml`` beside it when
    the recipe comes in sizes, else ``path`` itself (no size, a recipe without size files, or the size that
    ``path`` declares). A size the recipe does not come in is a SettingsError naming ``where`` (the model
    YAML), the size and the sizes there are."""
    path = Path(path)
    if not size:
        return path
    sizes = size_recipes(path)
    if not sizes or str(size) in sizes:
        return sizes.get(str(size), path)
    own = read_recipe(path)[1]
    if str(size) == own:
        return path
    known = sorted({*sizes, *([own] if own else [])}, key=_size_key)
    raise SettingsError(f"{where}: recipe_size '{size}' has no recipe: {path.name} comes in sizes "
                        f"{', '.join(known)} ({', '.join(sizes[k].name if k in sizes else path.name for k in known)}); "
                        f"set recipe_size= to one of them if the model is that size, or give a cfg= recipe made for "
                        f"this model")


def recipe_path(family: str | None, size: str | None = None, where: str = "the model") -> Path | None:
    """The family recipe file for model size ``size`` (:func:`sized_recipe`); None for a family without one."""
    record = get_family(family)
    if record is None:
        raise SettingsError(f"no family '{family}' is registered (known: {', '.join(sorted(families()))}); a head's "
                            f"family needs a record: rtdet.families.register_family (docs/families.md)")
    return None if record.recipe is None else sized_recipe(record.recipe, size, where)


def recipe_settings(family: str | None, size: str | None = None, where: str = "the model") -> dict:
    """The family recipe's values (the record's ``recipe`` file, or its file for model size ``size``), checked
    against the schema; {} for no family and for a family registered without a recipe (default.yaml and its
    criterion's defaults apply)."""
    path = recipe_path(family, size, where)
    if path is None:
        return {}
    recipe = read_recipe(path)[0]
    table = schema(family)
    stray = sorted(set(recipe) - set(table))
    if stray:
        raise SettingsError(f"{path}: keys {stray} are not settings of default.yaml or of the {family} loss")
    errors = []
    for k, v in recipe.items():
        try:
            recipe[k] = table[k].check(yaml_number(v))
        except SettingError as e:
            errors.append(f"{path}: {e}")
    if errors:
        raise SettingsError("\n".join(errors))
    return recipe


def family_settings() -> dict[str, dict[str, Setting]]:
    """{family: {key: Setting}}: the loss settings of every registered family."""
    return {name: {st.name: st for st in family.settings} for name, family in families().items()}


def valid_keys(family: str | None = None) -> set[str]:
    """default.yaml's keys plus the loss keys of ``family`` (of every family when None)."""
    return set(schema(family))


# ---------------------------------------------------------------------------------------- checking
def check_keys(overrides: dict, verb: str | None = None, family: str | None = None) -> None:
    """Raise SettingsError for a key that is not a setting (naming the closest valid keys), or, with
    ``family``, a loss key of another family (naming the family it belongs to). One line per bad key."""
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
                         f"{family}; its loss settings are: {own}")
            continue
        close = difflib.get_close_matches(str(k), sorted(keys), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        lines.append(f"'{k}' is not a valid setting{f' for {verb}' if verb else ''}.{hint} "
                     f"(every setting: `rtdet help settings`, or {DEFAULT_CFG})")
    raise SettingsError("\n".join(lines))


# Keys that Python code may set to objects rather than to values a user types.
_OBJECT_KEYS = ("model", "source", "data")
_PLAIN = (str, os.PathLike, bool, int, float, list, tuple, dict, type(None))


def check_settings(overrides: dict | None, verb: str | None = None, family: str | None = None) -> dict:
    """``overrides`` with every key known (see :func:`check_keys`) and every value checked against its
    schema and converted to the declared type. One line per bad value, naming the key, the value and
    what is allowed. A Python object given as ``model``, ``source`` or ``data`` (a DetectionModel, a numpy
    image, a DataConfig) is taken as it is: the code that uses it checks it."""
    overrides = dict(overrides or {})
    check_keys(overrides, verb, family)
    table = schema(family)
    out, errors = {}, []
    for k, v in overrides.items():
        if k in _OBJECT_KEYS and not isinstance(v, _PLAIN):
            out[k] = v  # a DetectionModel, numpy image or DataConfig handed over by Python code
            continue
        try:
            out[k] = table[k].check(v)
        except SettingError as e:
            errors.append(str(e))
    if errors:
        raise SettingsError("\n".join(errors))
    return out


def criterion_hyperparameters(args: dict, family: str | None) -> dict:
    """The values of the settings the family's criterion declares, from resolved settings."""
    return {k: args[k] for k in family_settings().get(family or "", {}) if k in args}


def verb_defaults(verb: str | None) -> dict:
    """{key: value}: what an empty setting means for ``verb``, as default.yaml declares it (``verbs``), e.g.
    ``verb_defaults("val")["conf"] == 0.001``. The one place a per-verb default is written."""
    return {k: copy.deepcopy(st.verb_default(verb)) for k, st in _schema().items() if st.verb_default(verb) is not None}


def with_verb_defaults(args: dict, verb: str | None) -> dict:
    """``args`` (in place) with every empty key that ``verb`` declares a default for set to it: a value set
    anywhere (default.yaml, recipe, the model file, the user) wins. Returns ``args``."""
    for k, v in verb_defaults(verb).items():
        if args.get(k) is None:
            args[k] = v
    return args


def resolve_settings(overrides: dict | None = None, family: str | None = None, verb: str | None = None,
                     size: str | None = None, where: str = "the model") -> dict:
    """default.yaml < the family's loss defaults < its recipe < a ``cfg=`` file still in ``overrides`` <
    ``overrides``, every value checked; each recipe is read in its file for model size ``size`` (see
    :func:`sized_recipe`; ``where`` names the model in its error). An empty value then takes ``verb``'s
    default (:func:`verb_defaults`). Unknown keys (or another family's loss keys) and bad values raise
    SettingsError."""
    overrides = check_settings(apply_cfg(dict(overrides or {}), verb, size or "", where), verb, family)
    args = default_settings()
    if family:
        args.update({k: copy.deepcopy(st.default) for k, st in family_settings().get(family, {}).items()})
        args.update(recipe_settings(family, size, where))
    args.update(overrides)
    return with_verb_defaults(args, verb)


def check_stored_settings(stored: dict, where: str | Path, given: Any = ()) -> dict:
    """The settings a model file carries (a checkpoint's ``args``, an .onnx's metadata: its input size and
    transforms), checked with the schema and ranges of the command line; a bad value is one
    CheckpointError line naming the file, the key, the value and what is allowed. Pipelines stored in a file
    are a built-in name or the transforms themselves (never a path on this machine), and are built once.
    Keys in ``given`` (set by the user, who overrides the file) are left out."""
    def bad(message: str) -> CheckpointError:
        return CheckpointError(f"{where}: the setting stored in the file is wrong: {message}. The file was edited "
                               f"or written by another program; give the setting on the command line to override it")

    try:
        out = check_settings({k: v for k, v in stored.items() if k not in given})
    except SettingsError as e:
        raise bad(str(e).splitlines()[0]) from None
    imgsz = int(out.get("imgsz") or _schema()["imgsz"].default)
    for key in ("train_pipeline", "val_pipeline"):
        value = out.get(key)
        if value is None:
            continue
        if isinstance(value, str) and value not in named_pipelines():
            raise bad(f"{key}={value!r} is not a built-in pipeline ({', '.join(named_pipelines())})")
        try:
            spec = load_pipeline_spec(value)
            for transforms in (spec.train, spec.val, *(stage.get("train") or [] for stage in spec.stages)):
                build_pipeline(transforms or [], imgsz)
        except (PipelineConfigError, AttributeError, TypeError) as e:
            raise bad(f"{key}: {' '.join(str(e).split())[:300]}") from None
    return out


def file_settings(loaded: Any, given: Any = ()) -> dict:
    """:func:`check_stored_settings` of a loaded model's inherited settings (``rtdet.io.LoadedModel``), less
    the keys in ``given``."""
    return check_stored_settings(loaded.inherited, loaded.path or loaded.source, given)


def describe_settings(family: str | None = None) -> str:
    """Every setting as text: key, default, what it accepts, doc (``rtdet help settings``)."""
    lines = [f"Settings ({DEFAULT_CFG}); values are checked before anything runs:"]

    def row(st: Setting) -> str:
        default = "" if st.default is None else st.default
        verbs = f" [empty: {', '.join(f'{v} for {k}' for k, v in st.verbs)}]" if st.verbs else ""
        return f"  {st.name:<20} {str(default):<10} {st.allowed()}: {st.doc}{verbs}"

    lines += [row(st) for st in _schema().values()]
    for name, settings in sorted(family_settings().items()):
        if family is None or name == family:
            lines.append(f"Loss settings of the {name} family (accepted for {name} models only):")
            lines += [row(st) for st in settings.values()]
    return "\n".join(lines)


def check_imgsz(args: dict, model) -> int | list[int]:
    """Round ``args["imgsz"]`` (a side, or [height, width]) up to a multiple of the model's largest stride,
    with a warning: the neck upsamples one map and concatenates it with the next, so every level must halve
    evenly (what Ultralytics' check_imgsz does too). The one rule of every verb. Returns the size used."""
    stride = max(model.strides)
    imgsz = args["imgsz"]
    sides = [int(v) for v in imgsz] if isinstance(imgsz, list | tuple) else [int(imgsz)]
    fixed = [max(stride, -(-side // stride) * stride) for side in sides]
    if fixed != sides:
        shown, used = (sides, fixed) if len(sides) > 1 else (sides[0], fixed[0])
        LOGGER.warning(f"imgsz={shown} is not a multiple of the model's largest stride {stride}; using imgsz={used}")
    args["imgsz"] = fixed if len(sides) > 1 else fixed[0]
    return args["imgsz"]


def check_half(args: dict, device) -> None:
    """``half=true`` (fp16) needs a CUDA device: on any other device it is a bad setting, refused before any
    work or run folder."""
    if args.get("half") and getattr(device, "type", str(device)) != "cuda":
        raise SettingsError(f"half=true: fp16 inference needs a CUDA GPU, and this run is on {device}; drop half=true "
                            f"(or use device=0 on a machine with a GPU)")


def shipped_recipes() -> list[str]:
    """The names ``cfg=`` takes for the recipes rtdet ships (deim, dfine, ...), without their size files
    (``cfg=deim`` reads deim-l.yaml for an L model)."""
    files = sorted((CFG_DIR / "recipes").glob("*.yaml"), key=lambda f: f.stem)  # deim before deim-rtv2
    sized = {p for f in files for p in size_recipes(f).values()}
    return [f.stem for f in files if f not in sized]


def settings_file(name: str | Path) -> Path:
    """``cfg=``'s file: a path, or the name of a settings file rtdet ships (``cfg=deim`` is
    ``rtdet/cfg/recipes/deim.yaml``: recipes a family's default does not pick, such as DEIM's for D-FINE)."""
    path = Path(str(name))
    shipped = CFG_DIR / "recipes" / f"{path.name}.yaml"
    if not path.exists() and not path.suffix and path.name == str(name) and shipped.is_file():
        return shipped
    return path


def cfg_path(name: str | Path, size: str | None = None, where: str = "the model") -> Path:
    """The file ``cfg=name`` reads for model size ``size`` (:func:`settings_file`, then :func:`sized_recipe`:
    ``cfg=deim`` for an L model is ``deim-l.yaml``); a SettingsError when there is no such file."""
    path = settings_file(name)
    if not path.is_file():
        raise SettingsError(f"cfg={name}: no such settings file, and not the name of one rtdet ships "
                            f"({', '.join(shipped_recipes())}); "
                            f"give the path of a settings YAML, e.g. cfg=best.yaml")
    return sized_recipe(path, size, where)


def _cfg_values(path: Path, verb: str | None) -> dict:
    """A settings file's values, every key and value checked (errors name the file)."""
    values = read_recipe(path)[0]
    if "cfg" in values:
        raise SettingsError(f"{path}: a settings file may not name another (cfg: {values['cfg']})")
    try:
        return check_settings(values, verb)
    except SettingsError as e:
        raise SettingsError("\n".join(f"{path}: {line}" for line in str(e).splitlines())) from None


def apply_cfg(overrides: dict, verb: str | None = None, size: str | None = None, where: str = "the model") -> dict:
    """``cfg=settings.yaml`` (Ultralytics' convention): the file's settings under the given ones, every key
    and value of the file checked against the schema (errors name the file). Returns the merged settings,
    without ``cfg``; without ``cfg`` the settings as given.

    A recipe that comes in model sizes (``cfg=deim``: ``deim-l.yaml`` beside it) is read in its file for
    ``size`` (``''``: the file itself). Training learns the size from the model, so for ``train`` and
    ``compare`` (whose variants are trained, each with its own size) without a ``size`` the file is checked and
    ``cfg`` is kept in the result for the trainer to apply."""
    overrides = dict(overrides or {})
    name = overrides.pop("cfg", None)
    if not name:
        return overrides
    path = cfg_path(name)
    if verb in ("train", "compare") and size is None and size_recipes(path):
        _cfg_values(path, verb)  # a bad file still stops here, before any work
        return {**overrides, "cfg": name}
    return {**_cfg_values(cfg_path(name, size, where), verb), **overrides}
