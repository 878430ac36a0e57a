"""The restricted reader: foreign classes become inert records, code is never run, bad files fail clearly."""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import pathlib
import sys
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn

from rtdet.io.foreign import is_module, module_state_dict, plain, to_float32
from rtdet.io.safe_pickle import ForeignObject, UnsafePickleError, read_checkpoint, read_torch_file
from rtdet.utils.checkpoint import CheckpointError
from tests.io.hostile import P, run_limited, tensor, torch_zip
from tests.io.iohelpers import define_class, throwaway_modules

CALLS: list = []


def record_call(*args):  # what a malicious payload would run
    CALLS.append(args)
    return "ran"


def test_plain_content_and_tensors_round_trip(tmp_path):
    obj = {
        "w": torch.arange(12, dtype=torch.float16).reshape(3, 4),
        "view": torch.arange(10.0)[2:8:2],  # a strided view of a shared storage
        "ints": torch.tensor([1, 2, 3]),
        "od": collections.OrderedDict(a=1, b=[1, 2, (3, 4)]),
        "set": {1, 2},
        "bytes": b"\x00\xffab",
        "np": np.float64(0.25),
        "np_int": np.int64(7),
        "arr": np.arange(6, dtype=np.float32).reshape(2, 3),
        "path": pathlib.PurePosixPath("runs/detect/train"),
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "size": torch.Size([2, 3]),
        "dtype": torch.float16,
        "param": nn.Parameter(torch.ones(2)),
    }
    path = tmp_path / "plain.pt"
    torch.save(obj, path)
    out = read_checkpoint(path)
    assert out["w"].dtype == torch.float16 and torch.equal(out["w"], obj["w"])
    assert torch.equal(out["view"], obj["view"]) and out["view"].stride() == (2,)
    assert torch.equal(out["ints"], obj["ints"]) and out["ints"].dtype == torch.int64
    assert out["od"] == obj["od"] and out["set"] == {1, 2} and out["bytes"] == obj["bytes"]
    assert out["np"] == 0.25 and isinstance(out["np"], float) and out["np_int"] == 7
    assert plain(out["arr"]) == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert out["path"] == "runs/detect/train" and out["when"] == obj["when"]
    assert out["size"] == (2, 3) and out["dtype"] is torch.float16
    assert torch.equal(out["param"], torch.ones(2))


def test_foreign_classes_become_records_and_their_package_is_never_imported(tmp_path):
    path = tmp_path / "foreign.pt"
    with throwaway_modules("thirdparty.models") as mods:
        layer_cls = define_class(mods["thirdparty.models"], "Layer")
        net_cls = define_class(mods["thirdparty.models"], "Net")
        # a __setstate__ that would run code, and an attribute-only config object
        define_class(mods["thirdparty.models"], "Config", base=object, __setstate__=lambda self, s: record_call(s))
        net = net_cls()
        net.body = nn.Sequential(layer_cls(), nn.Conv2d(2, 3, 1))
        net.body[0].lin = nn.Linear(2, 2)
        net.register_buffer("scale", torch.tensor([2.0]))
        net.register_buffer("tmp", torch.zeros(1), persistent=False)
        net.cfg = mods["thirdparty.models"].Config()
        net.cfg.depth = 3
        torch.save({"net": net.half(), "opt": argparse.Namespace(lr=0.1, path=pathlib.PosixPath("x"))}, path)
        expected = {k: v.clone() for k, v in net.state_dict().items()}
    assert "thirdparty" not in sys.modules
    out = read_checkpoint(path)
    assert "thirdparty" not in sys.modules and CALLS == []
    record = out["net"]
    assert isinstance(record, ForeignObject) and record.cls_name == "thirdparty.models.Net" and is_module(record)
    sd = module_state_dict(record)
    assert list(sd) == list(expected)  # names and order of nn.Module.state_dict(), non-persistent buffer left out
    assert all(torch.equal(sd[k], expected[k]) and sd[k].dtype == expected[k].dtype for k in sd)
    assert record.attrs["cfg"].cls_name == "thirdparty.models.Config" and record.attrs["cfg"].state == {"depth": 3}
    as_float, n = to_float32(sd)
    assert n == 5 and all(v.dtype == torch.float32 for v in as_float.values())
    assert plain(out["opt"]) == {"lr": 0.1, "path": "x"}


class Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_a_reduce_that_calls_a_function_is_refused_and_never_runs(tmp_path):
    path = tmp_path / "evil.pt"
    with throwaway_modules("evilpkg") as mods:
        mods["evilpkg"].record_call = record_call
        record_call.__module__, record_call.__qualname__ = "evilpkg", "record_call"
        try:
            torch.save({"model": {"w": torch.zeros(1)}, "x": Payload(record_call, "rm -rf ~")}, path)
        finally:
            record_call.__module__, record_call.__qualname__ = __name__, "record_call"
    with pytest.raises(UnsafePickleError, match=r"calls evilpkg\.record_call\('rm -rf ~'\)") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)
    assert CALLS == []
    with pytest.raises(UnsafePickleError):  # the loader's entry point falls back to the same reader
        read_torch_file(path)
    assert CALLS == []


def test_a_stdlib_function_is_refused_by_name(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload(os.system, f"touch {marker}")}, path)
    with pytest.raises(UnsafePickleError, match=r"refusing the global (posix|nt)\.system"):
        read_checkpoint(path)
    torch.save([Payload(eval, "1 + 1")], path)
    with pytest.raises(UnsafePickleError, match=r"refusing the global builtins\.eval"):
        read_checkpoint(path)
    torch.save([Payload(torch.load, "x.pt")], path)
    with pytest.raises(UnsafePickleError, match=r"refusing the global torch\.serialization\.load"):
        read_checkpoint(path)
    assert not marker.exists()


def test_truncated_wrong_type_and_empty_files_give_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(1000)}, good)
    data = good.read_bytes()
    cases = {
        "truncated.pt": data[: len(data) // 2],
        "empty.pt": b"",
        "image.pt": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
        "text.pt": b"nc: 80\nbackbone: []\n",
    }
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(p)
        msg = str(err.value)
        assert str(p) in msg and ("truncated" in msg or "empty" in msg or "not a torch checkpoint" in msg), msg
        with pytest.raises(CheckpointError):
            read_torch_file(p)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")


def test_a_damaged_tensor_record_is_named(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(100)}, good)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            dst.writestr(info, raw[:10] if "/data/" in info.filename else raw)
    with pytest.raises(CheckpointError, match=r"data/0 holds 10 bytes, expected 400"):
        read_checkpoint(bad)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archives_are_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointError, match="TorchScript"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="TorchScript"):
        read_torch_file(path)


def test_plain_state_dicts_take_the_weights_only_path(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"model": nn.Linear(2, 2).state_dict()}, path)
    obj, how = read_torch_file(path)
    assert how == "weights_only" and set(obj["model"]) == {"weight", "bias"}
    torch.save({"model": nn.Linear(2, 2).state_dict(), "args": argparse.Namespace(lr=1)}, path)
    obj, how = read_torch_file(path)
    assert how == "restricted" and obj["args"].cls_name == "argparse.Namespace"


def test_files_that_would_blow_up_memory_are_refused(tmp_path):
    path = tmp_path / "expanded.pt"
    torch.save({"w": torch.zeros(1).expand(10**9)}, path)  # 4 bytes on disk, a 4 GB tensor once copied
    with pytest.raises(UnsafePickleError, match="refusing to expand"):
        read_checkpoint(path)
    small = tmp_path / "small.pt"
    torch.save({"w": torch.zeros(1).expand(8)}, small)  # a small broadcast view is fine
    assert read_checkpoint(small)["w"].shape == (8,)
    # a compressed record that claims more bytes than the tensor needs is never inflated
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(4)}, good)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, b"\0" * (1 << 22) if "/data/" in info.filename else src.read(info))
    with pytest.raises(CheckpointError, match="holds 4194304 bytes, expected 16"):
        read_checkpoint(bomb)


def test_a_module_cycle_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "cycle.pt"
    with throwaway_modules("loopy") as mods:
        node = define_class(mods["loopy"], "Node")()
        node.lin = nn.Linear(1, 1)
        node.lin.back = node  # the pickle memo keeps the cycle
        torch.save({"model": node}, path)
    with pytest.raises(CheckpointError, match="nested more than"):
        module_state_dict(read_checkpoint(path)["model"])


# ------------------------------------------------------------------------ issue 18: bounded, no shared state
def _set_of_range(n: int) -> bytes:
    """``set(range(n))``: a few hundred bytes that build n objects."""
    return (P.proto() + P.EMPTY_DICT + P.text("model") + P.global_("builtins", "set") + P.global_("builtins", "range")
            + P.int_(n) + P.TUPLE1 + P.REDUCE + P.TUPLE1 + P.REDUCE + P.SETITEM + P.STOP)


def _shared_tree(levels: int) -> bytes:
    """An mmdetection-shaped {'meta': tree, 'state_dict': {}} whose tree is [t, t] of [t', t'] ... ``levels``
    deep, every level one shared reference: 2**levels leaves from a few hundred bytes."""
    ops = P.proto() + P.EMPTY_LIST + P.text("leaf") + P.APPEND + P.put(0) + P.POP
    for i in range(1, levels + 1):
        ops += P.EMPTY_LIST + P.MARK + P.get(i - 1) + P.get(i - 1) + P.APPENDS + P.put(i) + P.POP
    return (ops + P.EMPTY_DICT + P.text("meta") + P.EMPTY_DICT + P.text("cfg") + P.get(levels) + P.SETITEM
            + P.SETITEM + P.text("state_dict") + P.EMPTY_DICT + P.SETITEM + P.STOP)


READ = "from rtdet.io.safe_pickle import read_torch_file; read_torch_file(path)"


def test_memory_bombs_are_refused_fast_within_a_memory_limit(tmp_path):
    """Three bombs read in one child under RLIMIT_AS (so a bomb not refused fails fast, never swaps):
    a set built from a huge range (435 bytes: 2.6 GB before), a tree of shared references (2**40 leaves
    once expanded), a record that inflates from a few hundred KB to 260 MiB (more than any file may take)."""
    size = 260 << 20
    inflating = P.proto() + P.EMPTY_DICT + P.text("w") + tensor("0", size, (size,), (1,), "ByteStorage")
    paths = [torch_zip(tmp_path / "set.pt", _set_of_range(10**9)), torch_zip(tmp_path / "tree.pt", _shared_tree(40)),
             torch_zip(tmp_path / "inflate.pt", inflating + P.SETITEM + P.STOP, deflated={"0": (size, 1 << 20)})]
    assert paths[0].stat().st_size < 2000 and paths[2].stat().st_size < 2 << 20
    results = run_limited(READ, *map(str, paths), headroom_mb=256)
    expected = [("ReadLimitError", "set.pt: a set holds 1000000000 items"),
                ("ReadLimitError", "tree.pt: its content expands to"),
                ("CheckpointError", "inflate.pt: the record archive/data/0 inflates to 272629760 bytes")]
    for (result, seconds), (kind, text) in zip(results, expected):
        assert result.startswith(kind) and text in result and seconds < 10, result
    with pytest.raises(CheckpointError, match="a set holds 1000000000 items"):  # in this process too: no allocation
        read_checkpoint(paths[0])
    from rtdet.utils.checkpoint import load_checkpoint  # rtdet's own torch.load path checks records the same way

    with pytest.raises(CheckpointError, match="inflates to 272629760 bytes"):
        load_checkpoint(paths[2])


def test_what_real_files_hold_stays_readable(tmp_path):
    """A real set, and a normal amount of sharing, read as before."""
    assert read_checkpoint(torch_zip(tmp_path / "small.pt", _set_of_range(1000)))["model"] == set(range(1000))
    assert len(read_checkpoint(torch_zip(tmp_path / "ok.pt", _shared_tree(8)))["meta"]["cfg"]) == 2  # 256 leaves


def test_bytearray_of_a_size_written_in_the_file_is_refused_on_every_path(tmp_path):
    from rtdet.utils.checkpoint import load_checkpoint

    pkl = (P.proto() + P.EMPTY_DICT + P.text("x") + P.global_("__builtin__", "bytearray") + P.int_(10**10)
           + P.TUPLE1 + P.REDUCE + P.SETITEM + P.STOP)
    path = torch_zip(tmp_path / "bytes.pt", pkl)
    with pytest.raises(UnsafePickleError, match="bytes.pt: a bytearray is rebuilt from its bytes only"):
        read_torch_file(path)
    with pytest.raises(CheckpointError, match="bytes.pt: its pickle builds a bytearray"):
        load_checkpoint(path)  # torch.load(weights_only=True) would allocate 10 GB


def test_many_broadcast_views_count_what_they_expand_to(tmp_path):
    n = 1 << 24  # each view is allowed alone (16M elements of one 4-byte storage) ...
    views = b"".join(P.text(f"v{i}") + tensor("0", 1, (n,), (0,)) for i in range(64))
    pkl = P.proto() + P.EMPTY_DICT + P.MARK + views + b"u" + P.STOP  # SETITEMS
    path = torch_zip(tmp_path / "views.pt", pkl, records={"0": b"\0\0\0\0"})
    with pytest.raises(CheckpointError, match=r"views.pt: its content expands to \d+ bytes of tensors"):
        read_checkpoint(path)  # ... but 64 of them are 4 GiB to anything that copies them


def _hostile_mutations() -> list[bytes]:
    """Pickles that try to change what every load shares: each name the reader resolves, set with BUILD
    (a dict, and (None, slots) -- setattr: a function's __defaults__, a storage type's dtype), SETITEM, APPEND."""
    from rtdet.io.safe_pickle import _SAFE

    names = [*_SAFE, ("torch", "float32"), ("thirdparty", "Layer"), ("torch.nn.modules.conv", "Conv2d")]
    changes = [P.EMPTY_DICT + P.text("dtype") + P.global_("torch", "int32") + P.SETITEM + P.BUILD,
               b"N" + P.EMPTY_DICT + P.text("__defaults__") + P.MARK + P.int_(1) + P.TUPLE + P.SETITEM + P.TUPLE2
               + P.BUILD,
               P.text("k") + P.int_(1) + P.SETITEM,
               P.int_(1) + P.APPEND]
    return [P.proto() + P.global_(m, n) + change + P.STOP for m, n in names for change in changes]


def test_a_hostile_load_cannot_change_how_the_next_file_is_read(tmp_path):
    from rtdet.io import safe_pickle

    clean = tmp_path / "clean.pt"
    weights = {"w": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "h": torch.randn(2).half()}
    torch.save({"model": weights, "args": argparse.Namespace(lr=0.1)}, clean)
    snapshot = {k: (getattr(v, "__defaults__", None), getattr(v, "__kwdefaults__", None), repr(v))
                for k, v in safe_pickle._SAFE.items()}
    refused = 0
    for i, pkl in enumerate(_hostile_mutations()):
        try:
            read_checkpoint(torch_zip(tmp_path / f"hostile{i}.pt", pkl))
        except CheckpointError:
            refused += 1
        out = read_checkpoint(clean)
        assert set(out["model"]) == set(weights), i
        assert all(torch.equal(out["model"][k], v) and out["model"][k].dtype == v.dtype for k, v in weights.items()), i
        assert out["args"].cls_name == "argparse.Namespace" and out["args"].state == {"lr": 0.1}
    after = {k: (getattr(v, "__defaults__", None), getattr(v, "__kwdefaults__", None), repr(v))
             for k, v in safe_pickle._SAFE.items()}
    assert after == snapshot
    assert refused >= len(_hostile_mutations()) * 3 // 4  # nearly every one is refused outright
    # the storage-type attack that corrupted weights before: refused, naming the file
    with pytest.raises(UnsafePickleError, match=r"dtype.pt: the pickle tries to change torch storage type"):
        read_checkpoint(torch_zip(tmp_path / "dtype.pt", P.proto() + P.global_("torch", "FloatStorage") + P.EMPTY_DICT
                                  + P.text("dtype") + P.global_("torch", "int32") + P.SETITEM + P.BUILD + P.STOP))
