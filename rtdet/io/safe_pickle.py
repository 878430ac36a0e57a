"""Read checkpoints that pickle foreign classes (Ultralytics, official YOLOv9, timm, DeiT-style training
scripts) without importing or running any of their code.

    obj = read_checkpoint("rtdetr-l.pt")   # dicts, lists, tensors; foreign objects as ForeignObject records

A ``torch.save`` file is a zip archive: ``<name>/data.pkl`` (one pickle) plus one raw record per tensor
storage (``<name>/data/<key>``). The pickle is replayed by a restricted unpickler that resolves every
global name itself, in three classes:

* **safe callables** -- tensor and storage rebuilding, plain containers (``OrderedDict``, ``set``, ...),
  numeric numpy scalars and arrays, ``pathlib`` paths, ``datetime`` values. Each is rtdet's own function
  or a constructor that only builds data from data; see ``_SAFE``.
* **foreign classes** -- any other name outside the standard library and outside torch (``ultralytics.
  nn.tasks.RTDETRDetectionModel``, ``models.common.Conv``, ...) and ``torch.nn`` module classes. They
  become :class:`ForeignObject` records: the class name and the state pickle stored for the object (for
  a module, its ``__dict__`` with ``_parameters`` / ``_buffers`` / ``_modules``). The foreign package is
  never imported, no ``__reduce__`` result of theirs is called, no ``__setstate__`` of theirs runs.
  Creating a record from its state is what pickling an object normally asks for; a pickle that asks to
  *call* a foreign name with arguments (what a malicious ``__reduce__`` does) is refused, naming it.
* **everything else** -- other standard-library names (``os.system``, ``builtins.eval``, ``subprocess.
  Popen``, ...) and other torch functions -- is refused with an :class:`UnsafePickleError` naming the
  global.

Reading allocates the tensors in memory and nothing else happens: the returned tree is inert data.

**Bounded.** What one file may build is in proportion to its size (:class:`ReadBudget`): zip records are
compared with the budget before they are inflated, containers built by a call (``set(range(10**9))``) are
counted as they are built, and the tree's *expanded* size -- what a walk over it meets, a shared reference
counted as often as it appears -- is counted once it is read, so that a 2 KB tree of shared references
cannot become gigabytes in whatever walks it next. What exceeds the budget is refused, naming the file.

**No state shared between loads.** Every name a pickle may resolve is either immutable (builtin types,
torch dtypes) or a frozen wrapper (:class:`_Callable`) that refuses BUILD / SETITEM / attribute changes;
the record classes of foreign names are made per load. A hostile file that fails cannot change how the
next file is read.
"""

from __future__ import annotations

import _compat_pickle
import collections
import contextvars
import datetime
import io
import pathlib
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtdet.utils.checkpoint import CheckpointError, check_archive, read_limit, refuse_allocating_calls

__all__ = ["ForeignObject", "UnsafePickleError", "ReadLimitError", "ReadBudget", "read_checkpoint", "read_torch_file",
           "read_pickle", "is_zip_checkpoint", "check_expansion"]


class UnsafePickleError(CheckpointError):
    """A pickle that asks for something rtdet does not run (a function call, a forbidden global)."""


class ReadLimitError(CheckpointError):
    """A file that would build more in memory than its size allows (a memory bomb, or a damaged file)."""


# --------------------------------------------------------------------------------------- the budget
OBJECTS_FLOOR = 1 << 20  # objects any pickle may build (a set of a million ints: about 60 MB)
OBJECTS_PER_BYTE = 16  # ... and per byte of the pickle: one object costs a pickle at least one opcode byte


class ReadBudget:
    """What reading one file may build: ``max_bytes`` of tensor data (:func:`read_limit` of the file size)
    and ``max_objects`` container items, counted as they are made; exceeding either raises
    :class:`ReadLimitError` naming the file and what exceeded it."""

    def __init__(self, where: str, file_bytes: int, pickle_bytes: int | None = None):
        self.where, self.file_bytes = where, int(file_bytes)
        self.max_bytes = read_limit(file_bytes)
        self.max_objects = max(OBJECTS_FLOOR, OBJECTS_PER_BYTE * int(file_bytes if pickle_bytes is None
                                                                      else pickle_bytes))
        self.objects = 0

    def take_objects(self, n: int, what: str) -> None:
        self.objects += n
        if n > self.max_objects or self.objects > self.max_objects:
            raise ReadLimitError(f"{self.where}: {what} holds {n} items ({self.objects} built so far), more "
                                 f"than a {self.file_bytes}-byte file may build ({self.max_objects}); refusing "
                                 f"to read it (a damaged or hostile file)")


class _Load:
    """The state of one load: its budget and its foreign record classes (never shared with another load)."""

    def __init__(self, budget: ReadBudget):
        self.budget = budget
        self.classes: dict[str, type[ForeignObject]] = {}


_CURRENT: contextvars.ContextVar[_Load] = contextvars.ContextVar("rtdet_safe_pickle_load")


def _load_state() -> _Load:
    state = _CURRENT.get(None)
    if state is None:  # a safe callable used outside a load (tests, tools): a fresh budget of its own
        state = _Load(ReadBudget("pickle", 0))
    return state


# --------------------------------------------------------------------------------------- inert records
class ForeignObject:
    """An instance of a class rtdet never imports, kept as the data pickle recorded for it.

    ``cls_name`` is the class's full name (``ultralytics.nn.modules.conv.Conv``); ``state`` what the
    pickle set with BUILD (for a module its ``__dict__``); ``args`` the NEWOBJ arguments; ``items`` and
    ``mapping`` what was appended / assigned to it (list and dict subclasses)."""

    cls_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> ForeignObject:
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.mapping = args, kwargs, None, [], {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Only a call (REDUCE / OBJ opcodes) reaches __init__; NEWOBJ, the normal way an object is rebuilt,
        # calls __new__ alone. A call without arguments (SimpleNamespace, OrderedDict subclasses) only
        # builds an empty object; a call with arguments would run the foreign function: refuse it.
        if args or kwargs:
            shown = ", ".join([*(_short(a) for a in args), *(f"{k}={_short(v)}" for k, v in kwargs.items())])
            raise UnsafePickleError(
                f"the pickle calls {self.cls_name}({shown}); rtdet never calls foreign code while reading a "
                f"checkpoint (objects may only be rebuilt from their stored state). If this file came from a "
                f"source you trust, convert it with the program that wrote it into a plain state dict."
            )

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.mapping[key] = value

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    @property
    def attrs(self) -> dict:
        """The instance attributes: the BUILD state when it is a dict (or the dict part of (dict, slots))."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict | type(None)):
            merged = dict(state[0] or {})
            if isinstance(state[1], dict):
                merged.update(state[1])
            return merged
        return state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<foreign {self.cls_name}>"


def _foreign_class(module: str, name: str) -> type[ForeignObject]:
    """One record class per foreign global and load, so that records of the same class share a type and
    nothing a pickle does to a class can reach another load."""
    full, classes = f"{module}.{name}", _load_state().classes
    cls = classes.get(full)
    if cls is None:
        cls = type(name, (ForeignObject,), {"cls_name": full, "__module__": __name__, "__qualname__": name})
        classes[full] = cls
    return cls


class _Frozen:
    """Shared between loads, so refuses every change a pickle can ask for: BUILD (``__setstate__``),
    attribute assignment; it has no ``__dict__``, ``__setitem__`` or ``append``."""

    __slots__ = ()

    def __setattr__(self, key: str, value: Any) -> None:
        raise UnsafePickleError(f"the pickle tries to change {self!r}.{key}; refusing (a hostile file)")

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"the pickle tries to change {self!r} with {_short(state)}; refusing (a hostile file)")


class _Callable(_Frozen):
    """A name a pickle may call: the function (or class) it stands for, behind a frozen wrapper, so that no
    pickle can set the function's ``__defaults__``, ``__dict__`` or a class attribute for the next load."""

    __slots__ = ("_func", "_name")

    def __init__(self, func: Any, name: str):
        object.__setattr__(self, "_func", func)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._func(*args, **kwargs)

    def __repr__(self) -> str:
        return self._name


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------- tensors
_MAX_EXPANDED = 1 << 24  # elements a broadcast (zero-stride) view may claim beyond its storage
_MAX_PICKLE_BYTES = 1 << 31  # data.pkl holds structure, not tensors: 2 GiB is far beyond any real model


class _StorageType(_Frozen):
    """What ``torch.HalfStorage`` & co. resolve to: the element type of a storage record (frozen: one hostile
    file that changed FloatStorage's dtype would otherwise corrupt every later file's weights)."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype):
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self) -> str:
        return f"torch storage type {self.dtype}"


class _Storage:
    """One storage record read from the archive: raw bytes as an untyped storage, and its element type."""

    def __init__(self, untyped: torch.UntypedStorage, dtype: torch.dtype):
        self.untyped, self.dtype = untyped, dtype


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}  # fmt: skip


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, torch.Size):
        value = tuple(value)
    if not (isinstance(value, tuple | list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise UnsafePickleError(f"a tensor's {what} must be a tuple of ints, got {_short(value)}")
    return tuple(value)


def _tensor_from(storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise UnsafePickleError(f"a tensor must be rebuilt from a storage record of the file, got {_short(storage)}")
    if not isinstance(offset, int) or offset < 0:
        raise UnsafePickleError(f"a tensor's storage offset must be a non-negative int, got {_short(offset)}")
    size, stride = _as_int_tuple(size, "size"), _as_int_tuple(stride, "stride")
    dtype = storage.dtype if dtype is None else dtype
    try:
        tensor = torch.empty((0,), dtype=dtype).set_(storage.untyped, offset, size, stride)
    except RuntimeError as e:  # sizes that run past the storage: a damaged file
        raise CheckpointError(f"a tensor of size {size} does not fit its storage record ({e})") from None
    stored = storage.untyped.nbytes() // max(tensor.element_size(), 1)
    if tensor.numel() > max(stored, _MAX_EXPANDED):  # a zero-stride view of a few bytes claiming terabytes
        raise UnsafePickleError(f"a tensor of {tensor.numel()} elements over a storage of {stored}: refusing "
                                f"to expand it")
    return tensor


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor_from(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    # requires_grad, hooks (always empty: torch never saves hooks) and metadata (conj / neg bits) are
    # training-time details; a loaded weight needs none of them.
    return _tensor_from(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(dtype, torch.dtype):
        raise UnsafePickleError(f"a tensor's dtype must be a torch dtype, got {_short(dtype)}")
    return _tensor_from(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError(f"a parameter must wrap a tensor, got {_short(data)}")
    return data


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
    """Tensor subclasses (and tensors with Python attributes) are rebuilt as plain tensors."""
    if not (isinstance(func, _Callable) and func._func in _REBUILDERS) or not isinstance(args, tuple):
        raise UnsafePickleError(f"a tensor subclass must be rebuilt by a tensor function, got {_short(func)}")
    return func(*args)


# --------------------------------------------------------------------------------------- plain values
def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """How protocol-2 pickles store ``bytes``: ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode is only used for latin-1 bytes, got encoding {encoding!r}")
    return text.encode("latin1")


def _bytearray(data: Any = b"", encoding: Any = None) -> bytearray:
    """Protocol-2 bytearrays: ``bytearray(str, 'latin-1')``; never ``bytearray(n)`` (an n-byte allocation)."""
    if isinstance(data, str) and encoding in ("latin1", "latin-1"):
        _load_state().budget.take_objects(len(data), "a bytearray")
        return bytearray(data.encode("latin1"))
    if isinstance(data, bytes | bytearray) and encoding is None:
        _load_state().budget.take_objects(len(data), "a bytearray")
        return bytearray(data)
    raise UnsafePickleError(f"a bytearray is rebuilt from its bytes only, got {_short(data)}")


_SIZED = (list, tuple, set, frozenset, dict, str, bytes, bytearray, range)


def _counted(items: Any, what: str) -> Any:
    """``items`` for a container built by a call, once its length is within the budget: a call copies
    what it is given (``set(range(10**9))`` from 435 bytes), so the copy is counted before it is made."""
    if not isinstance(items, _SIZED):
        raise UnsafePickleError(f"{what} is built from plain containers only, got {_short(items)}")
    try:
        n = len(items)
    except OverflowError:  # range(10**30)
        n = 1 << 63
    _load_state().budget.take_objects(n, what)
    return items


def _set(items: Any = ()) -> set:
    return set(_counted(items, "a set"))


def _frozenset(items: Any = ()) -> frozenset:
    return frozenset(_counted(items, "a frozenset"))


def _ordered_dict(items: Any = ()) -> collections.OrderedDict:
    return collections.OrderedDict(_counted(items, "an OrderedDict"))


def _path(*parts: Any) -> str:
    if not all(isinstance(p, str) for p in parts):
        raise UnsafePickleError(f"a path is made of strings, got {_short(parts)}")
    return str(pathlib.PurePath(*parts)) if parts else "."


def _windows_path(*parts: Any) -> str:
    if not all(isinstance(p, str) for p in parts):
        raise UnsafePickleError(f"a path is made of strings, got {_short(parts)}")
    return str(pathlib.PureWindowsPath(*parts))


def _torch_size(values: Any = ()) -> tuple[int, ...]:
    return _as_int_tuple(tuple(values) if isinstance(values, list) else values, "size")


def _torch_device(kind: Any, index: Any = None) -> str:
    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
        raise UnsafePickleError(f"a device is a string and an optional int, got {_short((kind, index))}")
    return kind if index is None else f"{kind}:{index}"


def _defaultdict(default_factory: Any = None, *items: Any) -> dict:
    # the factory is never needed to read data; a plain dict keeps it inert
    return dict(*(_counted(i, "a defaultdict") for i in items))


def _reconstructor(cls: Any, base: Any, state: Any = None) -> ForeignObject:
    """Protocol 0/1 objects: ``copyreg._reconstructor(cls, object, None)`` makes an empty instance."""
    if not (isinstance(cls, type) and issubclass(cls, ForeignObject)) or base is not object:
        raise UnsafePickleError(f"copyreg._reconstructor is only used for plain objects, got {_short((cls, base))}")
    obj = cls.__new__(cls)
    if state is not None:
        obj.state = state
    return obj


_NUMPY_SPEC = re.compile(r"^[biufc?]\d{0,2}$")


class _NumpyDType:
    """``numpy.dtype(spec, align, copy)`` + BUILD: numeric dtypes only (no object arrays)."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False):
        if not isinstance(spec, str) or not _NUMPY_SPEC.match(spec):
            raise UnsafePickleError(f"only numeric numpy dtypes are read, got {_short(spec)}")
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    def numpy(self) -> np.dtype:
        return np.dtype((self.byteorder if self.byteorder != "|" else "") + self.spec)


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """A numpy scalar (``np.float64(0.5)`` in metrics) as the equal Python number."""
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes):
        raise UnsafePickleError("numpy scalars are read from a numeric dtype and raw bytes only")
    return np.frombuffer(data, dtype=dtype.numpy(), count=1)[0].item()


class _NumpyArray:
    """``numpy.core.multiarray._reconstruct`` + BUILD: a numeric array rebuilt from its raw bytes."""

    def __init__(self, subtype: Any = None, shape: Any = (0,), typecode: Any = b"b"):
        self.array = np.zeros(0)

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise UnsafePickleError("unexpected numpy array state")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _NumpyDType) or not isinstance(raw, bytes):
            raise UnsafePickleError("only numeric numpy arrays stored as raw bytes are read (no object arrays)")
        shape = _as_int_tuple(shape, "shape")
        self.array = np.frombuffer(raw, dtype=dtype.numpy()).reshape(shape, order="F" if fortran else "C").copy()


class _Marker(_Frozen):
    """A class named only as an argument (``numpy.ndarray`` in ``_reconstruct``); never called."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(f"the pickle calls {self.name}, which rtdet does not run")

    def __repr__(self) -> str:
        return self.name


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_PATH_MODULES = ("pathlib", "pathlib._local")

# (module, name) -> what the name resolves to. Everything here is rtdet's own function or a constructor
# that builds plain data from plain data; see _frozen_table for how it is shared between loads.
_NAMES: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("collections", "defaultdict"): _defaultdict,
    ("builtins", "set"): _set,
    ("builtins", "frozenset"): _frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "range"): range,
    ("builtins", "object"): object,  # only as copyreg._reconstructor's base
    ("_codecs", "encode"): _latin1_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("datetime", "datetime"): datetime.datetime,
    ("datetime", "date"): datetime.date,
    ("datetime", "time"): datetime.time,
    ("datetime", "timedelta"): datetime.timedelta,
    ("datetime", "timezone"): datetime.timezone,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("torch._tensor", "Tensor"): _Marker("torch.Tensor"),
    ("torch", "Tensor"): _Marker("torch.Tensor"),
    ("numpy", "dtype"): _NumpyDType,
    ("numpy", "ndarray"): _Marker("numpy.ndarray"),
    **{(m, "scalar"): _numpy_scalar for m in _NUMPY_MODULES},
    **{(m, "_reconstruct"): _NumpyArray for m in _NUMPY_MODULES},
    **{(m, n): _path for m in _PATH_MODULES for n in ("Path", "PosixPath", "PurePath", "PurePosixPath")},
    **{(m, n): _windows_path for m in _PATH_MODULES for n in ("WindowsPath", "PureWindowsPath")},
    **{("torch", n): _StorageType(d) for n, d in _STORAGE_DTYPES.items()},
}



def _frozen_table(names: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
    """The table every load shares: builtin types (``slice``, ``datetime.datetime``: their attributes cannot
    be set) and frozen objects as they are; rtdet's own functions and classes behind a :class:`_Callable`."""
    table = {}
    for (module, name), value in names.items():
        builtin = isinstance(value, type) and value.__module__ in ("builtins", "datetime")
        table[(module, name)] = value if builtin or isinstance(value, _Frozen) else _Callable(value, f"{module}.{name}")
    return table


_SAFE = _frozen_table(_NAMES)

# Standard-library classes whose instances only carry attributes (training-script settings): records.
_INERT_STDLIB = {("argparse", "Namespace"), ("types", "SimpleNamespace")}


def _resolve(module: str, name: str) -> Any:
    """What a pickled global name may stand for while reading (see the module docstring)."""
    if not (isinstance(module, str) and isinstance(name, str)):
        raise UnsafePickleError(f"malformed global {module!r}.{name!r}")
    # protocol-2 pickles (torch.save's default) spell Python 3 names the Python 2 way: __builtin__.set
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    if (module, name) in _SAFE:
        return _SAFE[(module, name)]
    top = module.split(".")[0]
    if top == "torch":
        if module == "torch":  # dtypes and memory formats are plain values
            value = getattr(torch, name, None)
            if isinstance(value, torch.dtype | torch.memory_format | torch.layout):
                return value
        if module.startswith("torch.nn."):  # torch.nn module classes: records like any other module
            return _foreign_class(module, name)
        raise UnsafePickleError(f"refusing the global {module}.{name}: torch functions other than tensor "
                                f"rebuilding are not run while reading a checkpoint")
    if (module, name) in _INERT_STDLIB:
        return _foreign_class(module, name)
    if top in sys.stdlib_module_names:
        raise UnsafePickleError(
            f"refusing the global {module}.{name}: a checkpoint holds tensors and plain data, and this "
            f"name could run code (the file may be malicious or not a checkpoint)"
        )
    return _foreign_class(module, name)  # a third-party class (or function): an inert record


class _RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose every global goes through :func:`_resolve` and whose tensors come from the
    archive's storage records."""

    def __init__(self, data: io.BytesIO, storages: Any):
        super().__init__(data, encoding="utf-8")
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        return _resolve(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise UnsafePickleError(f"unexpected persistent id {_short(pid)} (only tensor storages are read)")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType) or not isinstance(numel, int):
            raise UnsafePickleError(f"malformed storage reference {_short(pid)}")
        if self._storages is None:
            raise UnsafePickleError("this pickle refers to tensor storages but is not inside a torch archive")
        return self._storages(str(key), kind.dtype, numel)


# --------------------------------------------------------------------------------------- the archive
def is_zip_checkpoint(path: str | Path) -> bool:
    """A file in torch's zip checkpoint format (``torch.save`` since PyTorch 1.6)."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


class _Archive:
    """The records of a torch zip checkpoint: ``<prefix>/data.pkl``, ``<prefix>/data/<key>``, byteorder."""

    def __init__(self, zf: zipfile.ZipFile, where: str):
        self.zf, self.where = zf, where
        names = zf.namelist()
        roots = sorted({n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")})
        if len(roots) != 1:
            raise CheckpointError(f"{where}: a zip file, but not a torch checkpoint (no single <name>/data.pkl "
                                  f"record; found {len(names)} entries)")
        self.prefix = roots[0]
        if f"{self.prefix}/constants.pkl" in names:
            raise CheckpointError(f"{where}: a TorchScript archive (torch.jit.save); rtdet reads checkpoints "
                                  f"written by torch.save, not compiled programs")
        order = zf.read(f"{self.prefix}/byteorder").decode() if f"{self.prefix}/byteorder" in names else "little"
        if order not in ("little", "big"):
            raise CheckpointError(f"{where}: unknown byte order {order!r}")
        self.swap = order != sys.byteorder
        self.cache: dict[str, _Storage] = {}

    def storage(self, key: str, dtype: torch.dtype, numel: int) -> _Storage:
        if key in self.cache:
            return self.cache[key]
        name = f"{self.prefix}/data/{key}"
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        try:
            size = self.zf.getinfo(name).file_size
        except KeyError:
            raise CheckpointError(f"{self.where}: the tensor record {name} is missing (truncated file?)") from None
        # sizes are compared before anything is read, so a compressed record claiming more is never inflated
        if size != nbytes:
            raise CheckpointError(f"{self.where}: the tensor record {name} holds {size} bytes, expected "
                                  f"{nbytes} (truncated or damaged file)")
        raw = bytearray(size)  # within the budget: check_archive compared every record with it
        with self.zf.open(name) as fh:
            if fh.readinto(raw) != size:
                raise CheckpointError(f"{self.where}: the tensor record {name} is shorter than it says (truncated)")
        untyped = (torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8))
        untyped = untyped.untyped_storage()
        if self.swap and dtype.itemsize > 1:
            untyped.byteswap(dtype)
        self.cache[key] = _Storage(untyped, dtype)
        return self.cache[key]


def read_checkpoint(path: str | Path) -> Any:
    """Everything a ``torch.save`` file holds, read without running foreign code (see the module docstring).

    Raises :class:`UnsafePickleError` for a pickle that asks to run code and ``CheckpointError`` for a
    file that is missing, truncated or not a torch checkpoint; both name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted download or copy?)")
    if not is_zip_checkpoint(path):
        raise CheckpointError(
            f"{path}: not a torch checkpoint (torch.save writes a zip archive; this file is not one). It may be "
            f"truncated, another kind of file, or in PyTorch's pre-1.6 format with objects inside, which rtdet "
            f"does not read (pre-1.6 files of tensors and plain types load)."
        )
    try:
        with zipfile.ZipFile(path) as zf:
            check_archive(zf, str(path), path.stat().st_size)  # before any record is inflated
            archive = _Archive(zf, str(path))
            if zf.getinfo(f"{archive.prefix}/data.pkl").file_size > _MAX_PICKLE_BYTES:
                raise CheckpointError(f"{path}: its pickle record is larger than 2 GiB; not a checkpoint")
            data = zf.read(f"{archive.prefix}/data.pkl")
            budget = ReadBudget(str(path), path.stat().st_size, len(data))
            return _unpickle(io.BytesIO(data), archive.storage, budget)
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as e:
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {e}); the file may be truncated, "
                              f"use another copy") from None


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_torch_file(path: str | Path) -> tuple[Any, str]:
    """(content, how) of any ``torch.save`` file, within the file's :class:`ReadBudget`: how = "weights_only"
    when it holds only tensors and plain types, "restricted" when it holds foreign records.

    A zip checkpoint is read by :func:`read_checkpoint` (bounded: torch.load(weights_only=True) would build
    ``bytearray(10**10)`` or inflate any record a file names); a file in PyTorch's pre-1.6 format by
    ``torch.load(weights_only=True)`` once its pickles are checked for allocating calls."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if is_zip_checkpoint(path) or path.stat().st_size == 0:
        content = read_checkpoint(path)
        return content, "restricted" if _holds_records(content) else "weights_only"
    # PyTorch's pre-1.6 format (mmdetection's publish_model.py still writes it): readable when it holds only
    # tensors and plain types; anything else gets read_checkpoint's clear error
    try:
        _check_legacy(path)
        content = torch.load(path, map_location="cpu", weights_only=True)
    except ReadLimitError:
        raise
    except Exception:
        read_checkpoint(path)  # raises the clear error (not a checkpoint, truncated ...)
        raise
    check_expansion(content, ReadBudget(str(path), path.stat().st_size))
    return content, "weights_only"


def _check_legacy(path: Path) -> None:
    """The pickles at the head of a pre-1.6 file (magic, protocol, system info, the content, storage keys)
    checked for allocating calls before torch.load runs them."""
    with path.open("rb") as fh:
        for _ in range(5):
            try:
                refuse_allocating_calls(fh, str(path))
            except CheckpointError as e:
                raise ReadLimitError(str(e)) from None


def _holds_records(obj: Any) -> bool:
    """Whether a read tree holds a foreign record anywhere (each container visited once)."""
    seen, stack = set(), [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, ForeignObject):
            return True
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(_children(node))
    return False


def _children(node: Any) -> list:
    """What a walk over a read tree goes into from ``node`` (containers and records; leaves have none)."""
    if isinstance(node, dict):
        return [*node.keys(), *node.values()]
    if isinstance(node, list | tuple | set | frozenset):
        return list(node)
    if isinstance(node, ForeignObject):
        return [node.args, node.kwargs, node.state, node.items, node.mapping]
    return []


def _leaf_bytes(node: Any) -> int:
    if isinstance(node, torch.Tensor):
        return node.numel() * node.element_size()
    if isinstance(node, _NumpyArray):
        return node.array.nbytes
    if isinstance(node, str | bytes | bytearray):
        return len(node)
    return 0


def check_expansion(root: Any, budget: ReadBudget) -> None:
    """Refuse a tree whose expanded size exceeds the budget: the objects and tensor bytes a walk over it
    meets, a shared reference counted once per place it appears (a 2 KB tree of references shared 2 by 2,
    40 deep, is 2**40 objects to anything that copies, prints or converts it). Each container is visited
    once (its expanded size is remembered), so the check costs what the file holds, not what it expands to."""
    sizes: dict[int, tuple[int, int]] = {}  # id -> (objects, bytes) of its expanded subtree
    entered: set[int] = set()
    stack = [root]
    while stack:
        node = stack[-1]
        key = id(node)
        kids = _children(node)
        if key in sizes or not kids:
            stack.pop()
            continue
        if key not in entered:  # first visit: its children first
            entered.add(key)
            stack.extend(k for k in kids if _children(k) and id(k) not in entered)
            continue
        stack.pop()
        # a child still being entered is a cycle back to an ancestor: the walkers stop there (counted once)
        objects = 1 + sum(sizes.get(id(k), (1, 0))[0] for k in kids)
        nbytes = sum(sizes[id(k)][1] if id(k) in sizes else _leaf_bytes(k) for k in kids)
        sizes[key] = (min(objects, 1 << 62), min(nbytes, 1 << 62))
        if objects > budget.max_objects or nbytes > budget.max_bytes:
            what = (f"{objects} objects (at most {budget.max_objects})" if objects > budget.max_objects
                    else f"{nbytes} bytes of tensors and arrays (at most {budget.max_bytes})")
            raise ReadLimitError(f"{budget.where}: its content expands to {what} once its shared references "
                                 f"are followed, more than a {budget.file_bytes}-byte file may hold; refusing to "
                                 f"read it (a damaged or hostile file)")
    if root is not None and not _children(root) and _leaf_bytes(root) > budget.max_bytes:
        raise ReadLimitError(f"{budget.where}: a single tensor of {_leaf_bytes(root)} bytes, more than the file "
                             f"may hold ({budget.max_bytes}); refusing to read it")


def read_pickle(data: bytes, where: str = "pickle") -> Any:
    """A bare pickle (no tensors) read with the same restrictions and a budget of its own size."""
    return _unpickle(io.BytesIO(data), None, ReadBudget(where, len(data)))


def _unpickle(data: io.BytesIO, storages: Any, budget: ReadBudget) -> Any:
    """Replay one pickle in a load of its own (its budget, its record classes), then check its expansion."""
    where = budget.where
    token = _CURRENT.set(_Load(budget))
    try:
        content = _RestrictedUnpickler(data, storages).load()
        check_expansion(content, budget)
        return content
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{where}: {e}") from None
    except CheckpointError:
        raise
    except MemoryError:
        raise ReadLimitError(f"{where}: reading it ran out of memory; refusing it (a damaged or hostile "
                             f"file)") from None
    except (Exception, RecursionError) as e:  # the file's own damage (UnpicklingError, EOFError, TypeError ...)
        raise CheckpointError(f"{where}: the pickle inside is damaged or not a checkpoint "
                              f"({type(e).__name__}: {str(e)[:200]})") from None
    finally:
        _CURRENT.reset(token)
