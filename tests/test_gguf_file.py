"""The mmap GGUF reader against the `gguf` package's reader (an independent oracle), and its errors."""

import os
import resource

import numpy as np
import pytest
from gguf import GGUFReader
from gguf import GGUFValueType as VT

from llamacpy.errors import GGUFError
from llamacpy.gguf_file import GGUFFile
from llamacpy.gguf_writer import KV, TensorSpec, write_gguf
from shared import golden_dir, models_dir


@pytest.mark.parametrize("name", ["stories260K.gguf", "tiny-llama-Q4_K_M.gguf", "stories260K-Q5_1.gguf"])
def test_matches_gguf_reader(name):
    path = models_dir() / name
    ours, ref = GGUFFile(path), GGUFReader(path)
    ref_keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert list(ours.metadata) == ref_keys
    for key in ref_keys:
        want = ref.fields[key].contents()
        got = ours.metadata[key]
        if isinstance(got, np.ndarray):
            np.testing.assert_array_equal(got, np.asarray(want))
        elif isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-7)
        else:
            assert got == want, key
    assert list(ours.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert info.ggml_type == int(t.tensor_type)
        assert info.shape == tuple(int(d) for d in reversed(t.shape.tolist()))
        np.testing.assert_array_equal(ours.tensor_bytes(t.name).reshape(-1), np.asarray(t.data).view(np.uint8).reshape(-1))


def test_large_vocab_opens_in_bulk():
    # Llama 3 vocab: 128K tokens + 280K merges, read as whole arrays (no timing assert in a unit test; the speed is
    # measured in benchmarks, ~0.2 s here against ~20 s for gguf's reader)
    path = golden_dir() / "tokenizer" / "ggml-vocab-llama-bpe.gguf"
    g = GGUFFile(path)
    assert len(g.metadata["tokenizer.ggml.tokens"]) == 128256
    assert len(g.metadata["tokenizer.ggml.merges"]) == 280147
    assert g.metadata["tokenizer.ggml.merges"][0] == "Ġ Ġ"


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_open_is_lazy_resident_memory_grows_with_touched_pages(tmp_path):
    path = tmp_path / "big.gguf"
    n = 64 * 1024 * 1024 // 4  # 64 MiB of F32
    write_gguf(path, [KV("general.architecture", "llama", VT.STRING)],
               [TensorSpec("big", (n // 1024, 1024), 0, lambda: np.ones((n // 1024, 1024), np.float32))])
    os.posix_fadvise(os.open(path, os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)
    before = _rss_kib()
    g = GGUFFile(path)
    view = g.tensor("big")  # a view: no copy, no page touched
    after_open = _rss_kib()
    assert after_open - before < 8 * 1024  # far below the 64 MiB file
    assert view[: view.shape[0] // 2].sum() == n // 2  # touch half the pages
    after_touch = _rss_kib()
    assert after_touch - before > 24 * 1024


def test_missing_file(tmp_path):
    with pytest.raises(GGUFError, match="no such file"):
        GGUFFile(tmp_path / "nope.gguf")


def test_not_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        GGUFFile(p)


@pytest.mark.parametrize("cut", [10, 30, 2000, 200_000, -100])
def test_truncated(tmp_path, cut):
    data = (models_dir() / "stories260K.gguf").read_bytes()
    p = tmp_path / "t.gguf"
    p.write_bytes(data[:cut])
    with pytest.raises(GGUFError, match="truncated"):
        GGUFFile(p)


def test_writer_leaves_no_file_on_failure(tmp_path):
    p = tmp_path / "out.gguf"

    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_gguf(p, [KV("general.architecture", "llama", VT.STRING)], [TensorSpec("a", (32,), 0, boom)])
    assert list(tmp_path.iterdir()) == []
