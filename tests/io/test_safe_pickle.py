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
