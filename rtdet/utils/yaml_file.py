"""Reading a YAML file: one reader, so every bad YAML file is reported in the same words.

    from rtdet.utils.yaml_file import read_yaml
    raw = read_yaml("data.yaml", DataConfigError)   # DataConfigError("data.yaml: line 3: not valid YAML (...)")

The caller names the error class to raise (so each verb keeps its exit status) and checks the shape of what
it got (a mapping of settings, a dataset, a pipeline...); this module only turns the file into Python values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["read_yaml"]


def _error_text(path: str | Path, e: yaml.YAMLError) -> str:
    """One line naming the file and, where the parser knows it, the line: ``f.yaml: line 3: not valid YAML (...)``."""
    mark = getattr(e, "problem_mark", None)
    where = f" line {mark.line + 1}:" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e)
    return f"{path}:{where} not valid YAML ({' '.join(str(problem).split())})"


def read_yaml(path: str | Path, error: type[Exception] = ValueError) -> Any:
    """``yaml.safe_load`` of the UTF-8 text file ``path`` (``None`` for an empty file).

    Raises ``error`` with one line naming the file when it is missing, unreadable or not valid YAML.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise error(_error_text(path, e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot be read as a UTF-8 text file ({type(e).__name__})") from None
