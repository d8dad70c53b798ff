"""Weight mappings are advised MADV_HUGEPAGE (mmap_advice.py): the repack-cache entries' mappings and the GGUF
file's, unless LLAMACPY_NO_HUGEPAGES=1. Checked in the kernel's own record: /proc/self/smaps shows the flag "hg"
in VmFlags of a mapping advised so (Linux only)."""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest

from llamacpy.gguf_file import GGUFFile
from llamacpy.mmap_advice import ENV_NO_HUGE, advise_hugepages
from shared import models_dir
from test_repack_cache import _file, _linear, cache  # noqa: F401 (the fixture)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"),
                                reason="MADV_HUGEPAGE and /proc/self/smaps are Linux's")


def _vmflags(addr: int) -> list[str]:
    """VmFlags of the mapping holding addr."""
    inside = False
    with open("/proc/self/smaps") as f:
        for ln in f:
            w = ln.split()
            if w and "-" in w[0] and not w[0].endswith(":"):
                lo, hi = (int(v, 16) for v in w[0].split("-"))
                inside = lo <= addr < hi
            elif inside and w and w[0] == "VmFlags:":
                return w[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


def test_env_turns_the_advice_off(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    p.write_bytes(b"\1" * (4 << 20))
    with open(p, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    addr = np.frombuffer(mm, np.uint8).ctypes.data
    monkeypatch.setenv(ENV_NO_HUGE, "1")
    assert advise_hugepages(mm) is False and "hg" not in _vmflags(addr)
    monkeypatch.delenv(ENV_NO_HUGE)
    assert advise_hugepages(mm) is True and "hg" in _vmflags(addr)


def test_repack_entry_and_gguf_are_advised(tmp_path, cache, monkeypatch):  # noqa: F811
    monkeypatch.delenv(ENV_NO_HUGE, raising=False)
    p, shape, _ = _file(tmp_path)
    _linear(p, shape).repack()  # written, then mapped from the entry
    lin = _linear(p, shape)
    lin.repack()  # a hit: the entry's mapping
    assert "hg" in _vmflags(lin.packed[0].ctypes.data)
    g = GGUFFile(models_dir() / "stories260K.gguf")
    assert "hg" in _vmflags(np.frombuffer(g._mmap, np.uint8, count=1).ctypes.data)
    monkeypatch.setenv(ENV_NO_HUGE, "1")
    g2 = GGUFFile(models_dir() / "stories260K.gguf")
    assert "hg" not in _vmflags(np.frombuffer(g2._mmap, np.uint8, count=1).ctypes.data)
