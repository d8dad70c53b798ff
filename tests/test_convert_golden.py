"""The converter against llama.cpp's own conversions of the shared test models: same tensors (names, order,
types, shapes, bytes) and the same metadata (keys, values, value types)."""

from __future__ import annotations

import numpy as np
import pytest

from llamacpy.convert import convert, main
from llamacpy.gguf_file import GGUFFile
from shared import golden_dir, models_dir

# Keys that describe the writer rather than the model, allowed to differ from llama.cpp's file. general.name is
# derived from the source folder's name (as llama.cpp does), so it would change with a renamed folder. Every other
# key must be identical (today general.name is identical too).
WRITER_KEYS = {"general.name"}


def assert_same_tensors(ours: GGUFFile, ref: GGUFFile) -> None:
    assert list(ours.tensors) == list(ref.tensors)  # names and order
    for name, ti in ref.tensors.items():
        mine = ours.tensors[name]
        assert (mine.ggml_type, mine.shape, mine.nbytes) == (ti.ggml_type, ti.shape, ti.nbytes), name
        a = np.asarray(ours.tensor(name)).view(np.uint8).reshape(-1)
        b = np.asarray(ref.tensor(name)).view(np.uint8).reshape(-1)
        assert np.array_equal(a, b), f"{name}: bytes differ"


def assert_same_metadata(ours: GGUFFile, ref: GGUFFile, allowed: set[str] = WRITER_KEYS) -> None:
    mine = {k: v for k, v in ours.metadata.items() if k not in allowed}
    theirs = {k: v for k, v in ref.metadata.items() if k not in allowed}
    assert sorted(mine) == sorted(theirs)
    for k, v in theirs.items():
        assert ours.metadata_types[k] == ref.metadata_types[k], k
        w = mine[k]
        if isinstance(v, np.ndarray) or isinstance(v, list):
            assert list(np.asarray(w).tolist()) == list(np.asarray(v).tolist()), k
        else:
            assert w == v, k


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16"])
def test_hf_tiny_llama_matches_llamacpp(tmp_path, outtype):
    out = convert(models_dir() / "hf-tiny-llama", tmp_path / f"tiny-{outtype}.gguf", outtype)
    ref = GGUFFile(golden_dir() / "hf-tiny-llama" / f"llamacpp-{outtype}.gguf")
    ours = GGUFFile(out)
    assert_same_tensors(ours, ref)
    assert_same_metadata(ours, ref)
    assert list(ours.metadata) == list(ref.metadata)  # even the key order is llama.cpp's


def test_meta_two_shards_matches_llamacpp(tmp_path):
    out = convert(models_dir() / "meta-tiny-llama", tmp_path / "meta.gguf", "f32")
    ours, ref = GGUFFile(out), GGUFFile(golden_dir() / "meta-tiny-llama" / "llamacpp-f32.gguf")
    assert_same_tensors(ours, ref)
    assert_same_metadata(ours, ref)
    assert ours.metadata["llama.context_length"] == 4096  # guessed from norm_eps like convert_legacy_llama.py
    assert ours.metadata["llama.feed_forward_length"] == 768  # from the w1 shape, not multiple_of
    assert "rope_freqs.weight" not in ours.tensors


def test_meta_tensors_equal_hf_conversion(tmp_path):
    """The Meta shards hold the same weights as the HF checkpoint: Q/K need no permutation there."""
    meta = GGUFFile(convert(models_dir() / "meta-tiny-llama", tmp_path / "m.gguf", "f32"))
    hf = GGUFFile(golden_dir() / "hf-tiny-llama" / "llamacpp-f32.gguf")
    assert sorted(meta.tensors) == sorted(hf.tensors)
    for name in hf.tensors:
        assert np.array_equal(np.asarray(meta.tensor(name)), np.asarray(hf.tensor(name))), name


def test_llama2c_matches_llamacpp(tmp_path):
    src = models_dir() / "llama2c" / "stories260K.bin"
    out = convert(src, tmp_path / "s.gguf", "f32", vocab=models_dir() / "llama2c" / "tok512.bin")
    ours = GGUFFile(out)
    assert_same_tensors(ours, GGUFFile(models_dir() / "stories260K.gguf"))
    ref = GGUFFile(golden_dir() / "llama2c" / "llamacpp-stories260K.gguf")
    assert_same_tensors(ours, ref)
    assert_same_metadata(ours, ref)
    assert ours.metadata["llama.context_length"] == 128  # llama-convert-llama2c-to-ggml's default


def test_llama2c_finds_tokenizer_next_to_checkpoint(tmp_path):
    out = convert(models_dir() / "llama2c" / "stories260K.bin", tmp_path / "s.gguf", "f32")
    assert len(GGUFFile(out).metadata["tokenizer.ggml.tokens"]) == 512


def test_cli_q8_0_and_vocab_only(tmp_path, capsys):
    """q8_0: 2-D weights through the reference Q8_0 quantizer; vocab-only: metadata without tensors."""
    from gguf import GGMLQuantizationType as QT
    from gguf.quants import quantize

    out = tmp_path / "q8.gguf"
    assert main([str(models_dir() / "hf-tiny-llama"), "--outtype", "q8_0", "--outfile", str(out)]) == 0
    ours, ref = GGUFFile(out), GGUFFile(golden_dir() / "hf-tiny-llama" / "llamacpp-f32.gguf")
    assert ours.metadata["general.file_type"] == 7
    for name, ti in ref.tensors.items():
        mine = ours.tensors[name]
        if len(ti.shape) == 1:
            assert mine.type_name == "F32"
            continue
        assert mine.type_name == "Q8_0" and mine.shape == ti.shape
        want = quantize(np.asarray(ref.tensor(name)), QT.Q8_0).reshape(-1)
        assert np.array_equal(np.asarray(ours.tensor(name)).view(np.uint8).reshape(-1), want), name

    voc = tmp_path / "v.gguf"
    assert main([str(models_dir() / "hf-tiny-llama"), "--vocab-only", "--outfile", str(voc)]) == 0
    v = GGUFFile(voc)
    assert not v.tensors
    assert list(v.metadata["tokenizer.ggml.tokens"]) == list(ref.metadata["tokenizer.ggml.tokens"])


def test_meta_tokenizer_one_folder_up(tmp_path):
    """The original release layout: tokenizer.model beside the size folders (llama/tokenizer.model, llama/7B/)."""
    import shutil

    src = models_dir() / "meta-tiny-llama"
    model = tmp_path / "meta-tiny-llama"
    model.mkdir()
    for p in src.iterdir():
        shutil.copy(p, (tmp_path if p.name == "tokenizer.model" else model) / p.name)
    ours = GGUFFile(convert(model, tmp_path / "m.gguf", "f32"))
    ref = GGUFFile(golden_dir() / "meta-tiny-llama" / "llamacpp-f32.gguf")
    assert_same_metadata(ours, ref)
