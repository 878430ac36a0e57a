"""Hostile files built by hand: pickle opcodes written one by one, put into the zip layout torch.save writes,
and a runner that reads them in a child process under a memory limit (so a bomb fails fast, never swaps).

    data = P.proto() + P.global_("builtins", "set") + ... + P.stop()
    torch_zip(tmp_path / "bomb.pt", data)                       # archive/data.pkl + torch's other records
    [(result, seconds)] = run_limited("from rtdet.io.safe_pickle import read_checkpoint; read_checkpoint(path)", path)
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


class P:
    """Pickle opcodes (protocol 2, what torch.save writes), each as the bytes it is."""

    @staticmethod
    def proto() -> bytes:
        return b"\x80\x02"

    @staticmethod
    def global_(module: str, name: str) -> bytes:
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    @staticmethod
    def text(value: str) -> bytes:  # BINUNICODE
        raw = value.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw

    @staticmethod
    def int_(value: int) -> bytes:  # BININT (4 bytes) or LONG1 for larger
        if -(2**31) <= value < 2**31:
            return b"J" + struct.pack("<i", value)
        raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw

    @staticmethod
    def put(i: int) -> bytes:  # BINPUT: remember the top of the stack as memo[i]
        return b"q" + bytes([i])

    @staticmethod
    def get(i: int) -> bytes:  # BINGET: push memo[i] again (a shared reference)
        return b"h" + bytes([i])

    MARK, TUPLE, TUPLE1, TUPLE2, REDUCE, BUILD, STOP = b"(", b"t", b"\x85", b"\x86", b"R", b"b", b"."
    EMPTY_LIST, EMPTY_DICT, EMPTY_TUPLE, APPEND, APPENDS, SETITEM, POP = b"]", b"}", b")", b"a", b"e", b"s", b"0"


def torch_zip(path: Path, data_pkl: bytes, records: dict[str, bytes] | None = None,
              deflated: dict[str, tuple[int, int]] | None = None) -> Path:
    """A file in torch.save's zip layout (``archive/data.pkl``, ``archive/data/<key>``, byteorder, version ...)
    holding ``data_pkl``; ``records`` are stored tensor records; ``deflated`` = {key: (bytes, chunk)} are
    records of that many zero bytes, compressed (written in chunks: nothing of that size is ever in memory)."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            if "/data/" in info.filename:
                continue
            dst.writestr(info, data_pkl if info.filename.endswith("/data.pkl") else src.read(info))
        for key, raw in (records or {}).items():
            dst.writestr(f"archive/data/{key}", raw)
    # level 1: zeros compress as well, and fast
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        for key, (size, chunk) in (deflated or {}).items():
            with dst.open(f"archive/data/{key}", "w", force_zip64=True) as fh:
                zeros = bytes(chunk)
                for _ in range(size // chunk):
                    fh.write(zeros)
    return path


def storage_ref(key: str, numel: int, kind: str = "FloatStorage") -> bytes:
    """The persistent id torch.save writes for a storage record: ('storage', torch.<kind>, key, 'cpu', numel)."""
    return (P.MARK + P.text("storage") + P.global_("torch", kind) + P.text(key) + P.text("cpu") + P.int_(numel)
            + P.TUPLE + b"Q")  # BINPERSID


def tensor(key: str, numel: int, shape: tuple[int, ...], stride: tuple[int, ...], kind: str = "FloatStorage") -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())``."""
    ints = lambda t: P.MARK + b"".join(P.int_(v) for v in t) + P.TUPLE  # noqa: E731
    return (P.global_("torch._utils", "_rebuild_tensor_v2") + P.MARK + storage_ref(key, numel, kind) + P.int_(0)
            + ints(shape) + ints(stride) + b"\x89" + P.global_("collections", "OrderedDict") + P.EMPTY_TUPLE
            + P.REDUCE + P.TUPLE + P.REDUCE)


LIMITED = """
import resource, sys, time
import torch
torch.set_num_threads(1)
import rtdet.io.safe_pickle  # imported before the limit is set
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + {headroom}, size + {headroom}))
def run(path):
{body}
for path in sys.argv[1:]:
    start = time.perf_counter()
    try:
        run(path)
        result = "ok"
    except MemoryError:
        result = "MemoryError"
    except Exception as e:
        result = type(e).__name__ + " " + (str(e).splitlines()[0] if str(e) else "")
    print("RESULT", time.perf_counter() - start, result, flush=True)
"""


def run_limited(body: str, *paths: str, headroom_mb: int = 768, timeout: float = 120) -> list[tuple[str, float]]:
    """Run ``body`` (statements reading ``path``) for each of ``paths`` in one child whose address space may
    grow by ``headroom_mb`` only; returns [(the outcome: 'ok', 'MemoryError' or the exception's class and first
    line, seconds)]. A bomb the reader does not refuse shows up as MemoryError, fast, instead of swapping."""
    code = LIMITED.format(headroom=headroom_mb << 20, body=textwrap.indent(textwrap.dedent(body), " " * 4))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=timeout,
                          env=env)
    results = [line.split(" ", 2)[1:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == len(paths), f"the child died (exit {done.returncode}): {done.stderr[-2000:]}"
    return [(text, float(seconds)) for seconds, text in results]
