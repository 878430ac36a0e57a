"""One direction of dependency: every module of rtdet imports only its own layer or the layers below it, and
imports other rtdet modules at the top of the file (a function-local import hides a cycle instead of
removing it; only optional third-party packages are imported inside functions).

The layers, lowest first. A module belongs to the longest prefix that names it (``rtdet.nn.heads.yolo`` is in
``rtdet.nn.heads``, ``rtdet.nn.model`` in ``rtdet.nn``):
"""

import ast
from pathlib import Path

import pytest

LAYERS = [
    "rtdet.version",      # the version string
    "rtdet.utils",        # logging, schema, checkpoints, devices, YAML files, DDP helpers
    "rtdet.ops",          # boxes, anchors, NMS, metrics, padded targets: tensor maths
    "rtdet.data",         # datasets, transforms, pipelines, loaders
    "rtdet.nn.registry",  # the module registry and channel rules
    "rtdet.nn.modules",   # the building blocks
    "rtdet.nn.heads",     # the family heads
    "rtdet.nn",           # the YAML builder and DetectionModel
    "rtdet.losses",       # the criteria and their assigners
    "rtdet.families",     # the records that bind head, criterion, recipe and converters
    "rtdet.io",           # loading, converting and transplanting checkpoints
    "rtdet.deploy",       # ONNX export, metadata, ONNX Runtime, parity, int8
    "rtdet.engine",       # the verbs: train, val, predict, export, benchmark, compare, tune, track
    "rtdet.api",          # Detector
    "rtdet.demo",         # rtdet demo (runs the API)
    "rtdet.cli",          # the command line
    "rtdet.__main__",
    "rtdet",              # the package's lazy public names
]

PACKAGE = Path(__file__).resolve().parents[1] / "rtdet"


def layer_of(module: str) -> int:
    matches = [i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + ".")]
    return max(matches, key=lambda i: len(LAYERS[i]))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rtdet_imports(tree: ast.Module) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of an rtdet module."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            elif isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            else:
                names = []
            found.extend((n, child.lineno, in_function) for n in names if n == "rtdet" or n.startswith("rtdet."))
            visit(child, inner)

    visit(tree, False)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer():
    assert MODULES and all(layer_of(module_name(p)) >= 0 for p in MODULES)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_go_down_only(path):
    me = module_name(path)
    upward = [f"line {line}: {name} ({LAYERS[layer_of(name)]} is above {LAYERS[layer_of(me)]})"
              for name, line, _ in rtdet_imports(ast.parse(path.read_text())) if layer_of(name) > layer_of(me)]
    assert not upward, f"{me} imports a higher layer: " + "; ".join(upward)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_rtdet_modules_are_imported_at_the_top(path):
    local = [f"line {line}: {name}" for name, line, in_function in rtdet_imports(ast.parse(path.read_text()))
             if in_function]
    assert not local, f"{module_name(path)} imports rtdet modules inside functions: " + "; ".join(local)


def test_the_checker_sees_local_and_upward_imports():
    tree = ast.parse("import rtdet.utils\n\ndef f():\n    from rtdet.engine.trainer import Trainer\n")
    assert rtdet_imports(tree) == [("rtdet.utils", 1, False), ("rtdet.engine.trainer", 4, True)]
    assert layer_of("rtdet.nn.heads.yolo") < layer_of("rtdet.nn.model") < layer_of("rtdet.losses.yolov9")
    assert layer_of("rtdet.engine.trainer") > layer_of("rtdet.deploy.graph") > layer_of("rtdet.io.load")
