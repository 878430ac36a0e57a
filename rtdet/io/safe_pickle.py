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
"""

from __future__ import annotations

import _compat_pickle
import collections
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

from rtdet.utils.checkpoint import CheckpointError

__all__ = ["ForeignObject", "UnsafePickleError", "read_checkpoint", "read_torch_file", "read_pickle",
           "is_zip_checkpoint"]


class UnsafePickleError(CheckpointError):
    """A pickle that asks for something rtdet does not run (a function call, a forbidden global)."""


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


_FOREIGN_CLASSES: dict[str, type[ForeignObject]] = {}


def _foreign_class(module: str, name: str) -> type[ForeignObject]:
    """One record class per foreign global (cached), so records of the same class share a type."""
    full = f"{module}.{name}"
    cls = _FOREIGN_CLASSES.get(full)
    if cls is None:
        cls = type(name, (ForeignObject,), {"cls_name": full, "__module__": __name__, "__qualname__": name})
        _FOREIGN_CLASSES[full] = cls
    return cls


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------- tensors
_MAX_EXPANDED = 1 << 24  # elements a broadcast (zero-stride) view may claim beyond its storage
_MAX_PICKLE_BYTES = 1 << 31  # data.pkl holds structure, not tensors: 2 GiB is far beyond any real model


class _StorageType:
    """What ``torch.HalfStorage`` & co. resolve to: the element type of a storage record."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


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
    if func not in _REBUILDERS or not isinstance(args, tuple):
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
        return bytearray(data.encode("latin1"))
    if isinstance(data, bytes | bytearray) and encoding is None:
        return bytearray(data)
    raise UnsafePickleError(f"a bytearray is rebuilt from its bytes only, got {_short(data)}")


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
    return dict(*items)  # the factory is never needed to read data; a plain dict keeps it inert


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


class _Marker:
    """A class named only as an argument (``numpy.ndarray`` in ``_reconstruct``); never called."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(f"the pickle calls {self.name}, which rtdet does not run")


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_PATH_MODULES = ("pathlib", "pathlib._local")

# (module, name) -> what the name resolves to. Everything here is rtdet's own function or a constructor
# that builds plain data from plain data.
_SAFE: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): _defaultdict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
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
        raw = self.zf.read(name)
        untyped = (torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8))
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
            archive = _Archive(zf, str(path))
            if zf.getinfo(f"{archive.prefix}/data.pkl").file_size > _MAX_PICKLE_BYTES:
                raise CheckpointError(f"{path}: its pickle record is larger than 2 GiB; not a checkpoint")
            data = io.BytesIO(zf.read(f"{archive.prefix}/data.pkl"))
            return _unpickle(data, archive.storage, str(path))
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
    """(content, how) of any ``torch.save`` file: ``torch.load(weights_only=True)`` when the file holds
    only tensors and plain types (how = "weights_only"), else :func:`read_checkpoint` ("restricted")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not is_zip_checkpoint(path) and path.stat().st_size > 0:
        # PyTorch's pre-1.6 format (mmdetection's publish_model.py still writes it): readable when it holds
        # only tensors and plain types; anything else gets read_checkpoint's clear error
        try:
            return torch.load(path, map_location="cpu", weights_only=True), "weights_only"
        except Exception:
            read_checkpoint(path)
    if not is_zip_checkpoint(path) or _is_torchscript(path):
        read_checkpoint(path)  # raises the clear error for empty / truncated / other files, TorchScript
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "weights_only"
    except pickle.UnpicklingError:  # foreign classes inside: the restricted reader decides what may be read
        return read_checkpoint(path), "restricted"
    except Exception as e:  # damaged archives raise RuntimeError / OSError / ...: say what is wrong
        content = read_checkpoint(path)  # TorchScript, missing records, ...: raises the precise error
        if content is not None:
            return content, "restricted"
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {reason}); the file "
                              f"may be truncated, use another copy") from None


def read_pickle(data: bytes, where: str = "pickle") -> Any:
    """A bare pickle (no tensors) read with the same restrictions, e.g. metadata records."""
    return _unpickle(io.BytesIO(data), None, where)


def _unpickle(data: io.BytesIO, storages: Any, where: str) -> Any:
    try:
        return _RestrictedUnpickler(data, storages).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{where}: {e}") from None
    except CheckpointError:
        raise
    except (Exception, RecursionError) as e:  # the file's own damage (UnpicklingError, EOFError, TypeError ...)
        raise CheckpointError(f"{where}: the pickle inside is damaged or not a checkpoint "
                              f"({type(e).__name__}: {str(e)[:200]})") from None
