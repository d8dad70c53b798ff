"""The disk cache of repacked weights (kernels/repack_cache.py): hits, and every failure case rebuilt or
skipped, never used -- truncated entry, corrupt header/data, changed source file, read-only folder, cache off,
two processes writing at once. Results are checked against the numpy reference each time (a wrong entry would
show as wrong numbers, not only as a counter)."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from llamacpy.kernels import fuse_linears, make_linear
from llamacpy.kernels import repack_cache as RC
from test_kernels import rounded, weights

N_OUT, N_IN = 96, 512
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv(RC.ENV_DIR, str(d))
    monkeypatch.delenv(RC.ENV_OFF, raising=False)
    RC.set_enabled(None)
    for k in RC.stats:
        RC.stats[k] = 0
    return d


def _file(tmp_path, typ=T.Q4_0, seed=0, name="w.bin", n_out=N_OUT):
    raw, w = weights(typ, n_out, N_IN, np.random.default_rng(seed))
    p = tmp_path / name
    p.write_bytes(b"\0" * 4096 + raw.tobytes())  # the tensor at offset 4096, as in a GGUF file
    return p, raw.shape, w


def _linear(p, shape, typ=T.Q4_0, name="blk.0.ffn_up.weight"):
    with open(p, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mm, np.uint8, offset=4096, count=shape[0] * shape[1]).reshape(shape)
    return make_linear(int(typ), view, (shape[0], N_IN), name)


def _check(lin, w, typ=T.Q4_0):
    x = np.random.default_rng(1).standard_normal((2, N_IN)).astype(np.float32)
    ref = rounded(typ, x).astype(np.float64) @ w.T.astype(np.float64)
    assert np.abs(lin(x) - ref).max() <= 1e-4 * np.abs(ref).max()


def _entries(cache):
    return sorted(cache.rglob("*.rpk"))


@pytest.mark.parametrize("typ", [T.Q4_0, T.Q8_0, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_written_once_then_mapped(tmp_path, cache, typ):
    p, shape, w = _file(tmp_path, typ)
    _check(_linear(p, shape, typ), w, typ)
    assert RC.stats["writes"] == 1 and len(_entries(cache)) == 1
    lin = _linear(p, shape, typ)
    _check(lin, w, typ)
    assert RC.stats["hits"] == 1 and RC.stats["writes"] == 1
    assert RC._mmap_of(lin.packed[0]) is not None  # served from the entry's mapping, not a fresh repack


def test_truncated_entry_is_rebuilt(tmp_path, cache):
    p, shape, w = _file(tmp_path)
    _check(_linear(p, shape), w)
    (e,) = _entries(cache)
    with open(e, "r+b") as f:
        f.truncate(e.stat().st_size - 100)
    _check(_linear(p, shape), w)
    assert RC.stats["rebuilt"] == 1 and RC.stats["writes"] == 2 and RC.stats["hits"] == 0
    _check(_linear(p, shape), w)
    assert RC.stats["hits"] == 1


def _header(e):
    import json

    b = e.read_bytes()
    return json.loads(b[16:16 + int.from_bytes(b[8:16], "little")])


@pytest.mark.parametrize("where", ["magic", "header", "quants_last_page", "scales"])
def test_corrupt_entry_is_rebuilt(tmp_path, cache, where):
    p, shape, w = _file(tmp_path)
    _check(_linear(p, shape), w)
    (e,) = _entries(cache)
    arrays = _header(e)["arrays"]
    b = bytearray(e.read_bytes())
    if where == "magic":
        b[0:4] = b"XXXX"
    elif where == "header":
        b[20:24] = b"XXXX"
    else:  # inside the sampled pages: the last 4 KiB of the quants, the first bytes of the scales
        a = arrays[0] if where == "quants_last_page" else arrays[1]
        pos = a["offset"] + a["nbytes"] - 100 if where == "quants_last_page" else a["offset"] + 3
        b[pos] ^= 0xFF
    e.write_bytes(bytes(b))
    _check(_linear(p, shape), w)
    assert RC.stats["rebuilt"] == 1 and RC.stats["hits"] == 0


def test_changed_source_file_is_rebuilt(tmp_path, cache):
    p, shape, w = _file(tmp_path, seed=0)
    _check(_linear(p, shape), w)
    p2, _, w2 = _file(tmp_path, seed=5, name="other.bin")
    os.replace(p2, p)  # same path, new content (and size/mtime/inode)
    _check(_linear(p, shape), w2)
    assert RC.stats["rebuilt"] == 1 and RC.stats["hits"] == 0
    assert len(_entries(cache)) == 1  # replaced in place, not left next to it


def test_read_only_folder_falls_back(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv(RC.ENV_DIR, str(blocker / "cache"))  # mkdir fails even for root
    monkeypatch.setattr(RC, "_warned", False)
    RC.set_enabled(None)
    p, shape, w = _file(tmp_path)
    lin = _linear(p, shape)
    _check(lin, w)
    assert RC._mmap_of(lin.packed[0]) is None
    assert "repacking in memory" in capsys.readouterr().err
    if os.geteuid() != 0:  # permissions bind only non-root users
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        monkeypatch.setenv(RC.ENV_DIR, str(ro))
        _check(_linear(p, shape), w)


def test_cache_off_by_env_and_flag(tmp_path, cache, monkeypatch):
    p, shape, w = _file(tmp_path)
    monkeypatch.setenv(RC.ENV_OFF, "1")
    _check(_linear(p, shape), w)
    monkeypatch.delenv(RC.ENV_OFF)
    RC.set_enabled(False)
    try:
        _check(_linear(p, shape), w)
    finally:
        RC.set_enabled(None)
    assert not cache.exists() and RC.stats["skipped"] == 2


def test_fused_parts_cached_as_one_entry(tmp_path, cache):
    """128 rows: whole row groups for the generic kernels too (LLAMACPY_ISA=generic), so the parts fuse."""
    p, shape, w = _file(tmp_path, n_out=128)
    a = _linear(p, shape, name="q")
    b = _linear(p, shape, name="k")
    f = fuse_linears([a, b])
    x = np.random.default_rng(2).standard_normal((1, N_IN)).astype(np.float32)
    y = f(x)
    ref = rounded(T.Q4_0, x).astype(np.float64) @ np.concatenate([w, w]).T.astype(np.float64)
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    f2 = fuse_linears([_linear(p, shape, name="q"), _linear(p, shape, name="k")])
    np.testing.assert_array_equal(f2(x), y)
    assert RC.stats["writes"] == 1 and RC.stats["hits"] == 1


_WRITER = """
import mmap, sys, numpy as np
sys.path.insert(0, sys.argv[3])
from llamacpy.kernels import make_linear, repack_cache as RC
from test_kernels import weights, rounded
from gguf import GGMLQuantizationType as T
n_out, n_in = 2048, 2048
with open(sys.argv[1], "rb") as f:
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
view = np.frombuffer(mm, np.uint8, offset=4096, count=n_out * n_in // 32 * 18).reshape(n_out, -1)
sys.stdin.readline()  # start together
lin = make_linear(2, view, (n_out, n_in), "w")
lin.repack()
x = np.random.default_rng(1).standard_normal((1, n_in)).astype(np.float32)
np.save(sys.argv[2], lin(x))
print(RC.stats)
"""


def test_two_processes_writing_at_once(tmp_path, cache):
    raw, w = weights(T.Q4_0, 2048, 2048, np.random.default_rng(3))
    p = tmp_path / "big.bin"
    p.write_bytes(b"\0" * 4096 + raw.tobytes())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(p), str(tmp_path / f"y{i}.npy"),
                               str(ROOT / "tests")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    for pr in procs:
        pr.stdin.write("go\n")
        pr.stdin.flush()
    outs = [pr.communicate(timeout=600) for pr in procs]
    for pr, (out, err) in zip(procs, outs):
        assert pr.returncode == 0, err
    y0, y1 = np.load(tmp_path / "y0.npy"), np.load(tmp_path / "y1.npy")
    np.testing.assert_array_equal(y0, y1)
    x = np.random.default_rng(1).standard_normal((1, 2048)).astype(np.float32)
    ref = rounded(T.Q4_0, x).astype(np.float64) @ w.T.astype(np.float64)
    assert np.abs(y0 - ref).max() <= 1e-4 * np.abs(ref).max()
    (e,) = _entries(cache)  # one valid entry, no temporary files left
    assert not [q for q in cache.rglob("*") if q.is_file() and q.suffix != ".rpk"]
    lin = _linear_big(p)
    np.testing.assert_array_equal(lin(x), y0)
    assert RC.stats["hits"] == 1


def _linear_big(p):
    with open(p, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mm, np.uint8, offset=4096, count=2048 * 2048 // 32 * 18).reshape(2048, -1)
    return make_linear(int(T.Q4_0), view, (2048, 2048), "w")


def test_entry_written_in_aligned_pieces(tmp_path, monkeypatch):
    """A new entry goes to disk in WRITE_PIECE (2 MiB) writes at multiples of WRITE_PIECE (one write per aligned
    range: the page cache can take each as one 2 MiB folio), and reads back as the arrays given."""
    writes = []
    real_open = open

    class Rec:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            writes.append((self.f.tell(), len(b)))
            return self.f.write(b)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(RC, "open", lambda p, mode="r", **k: Rec(real_open(p, mode, **k)) if "w" in mode
                        else real_open(p, mode, **k), raising=False)
    rng = np.random.default_rng(5)
    arrays = (rng.integers(0, 255, (700, 7000), dtype=np.uint8), rng.standard_normal((700, 33)).astype(np.float32))
    p = tmp_path / "e.rpk"
    RC._write(p, {"k": 1}, {"s": 1}, arrays)
    size = p.stat().st_size
    assert size > 2 * RC.WRITE_PIECE and sum(n for _, n in writes) == size
    assert all(o % RC.WRITE_PIECE == 0 for o, _ in writes)
    assert all(n == RC.WRITE_PIECE for _, n in writes[:-1])
    got = RC._read(p, {"k": 1}, {"s": 1})
    assert got and all(np.array_equal(a, b) for a, b in zip(got, arrays))
