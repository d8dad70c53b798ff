"""gguf_writer's write protocol: temp file + fsync + rename + fsync of the folder, permissions from the umask, and
no file left behind when a write fails."""

import os
import stat

import numpy as np
import pytest
from gguf import GGUFValueType

from llamacpy import gguf_writer
from llamacpy.errors import LlamacpyError
from llamacpy.gguf_file import GGUFFile
from llamacpy.gguf_writer import KV, TensorSpec, write_gguf

KVS = [KV("general.architecture", "llama", GGUFValueType.STRING)]


def _tensor(name="t", fail=False):
    def produce():
        if fail:
            raise RuntimeError("boom")
        return np.arange(8, dtype=np.float32)
    return TensorSpec(name, (8,), 0, produce)


def test_file_and_folder_are_fsynced_around_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(("fsync", kind))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", os.path.basename(b)))
        real_replace(a, b)

    monkeypatch.setattr(gguf_writer.os, "fsync", fsync)
    monkeypatch.setattr(gguf_writer.os, "replace", replace)
    write_gguf(tmp_path / "out.gguf", KVS, [_tensor()])
    assert events == [("fsync", "file"), ("replace", "out.gguf"), ("fsync", "dir")]
    assert np.array_equal(GGUFFile(tmp_path / "out.gguf").tensor("t"), np.arange(8, dtype=np.float32))


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_permissions_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_gguf(tmp_path / "out.gguf", KVS, [_tensor()])
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out.gguf").st_mode) == mode
    assert os.umask(old) == old  # the writer left the process umask as it was


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        write_gguf(tmp_path / "out.gguf", KVS, [_tensor(), _tensor("u", fail=True)])
    assert os.listdir(tmp_path) == []


def test_unwritable_folder_is_one_clear_error(tmp_path, monkeypatch):
    # the error path itself, independent of whether the tests run as root (who ignores folder permissions)
    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(gguf_writer.tempfile, "mkstemp", refuse)
    with pytest.raises(LlamacpyError, match=r"out\.gguf: cannot write output file \(Permission denied\)"):
        write_gguf(tmp_path / "out.gguf", KVS, [_tensor()])
    assert os.listdir(tmp_path) == []
