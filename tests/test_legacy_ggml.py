"""Legacy GGML / GGMF / GGJT files -> GGUF, checked against llama.cpp's converter output (golden/legacy/)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from llamacpy.convert import ConvertError, convert
from llamacpy.gguf_file import GGUFFile
from shared import golden_dir, models_dir

NAMES = ["ggml", "ggmf1", "ggjt1", "ggjt3", "Q4_0-ggjt3"]
LLAMACPP_ARGS = dict(gqa=2, eps=1e-5)  # the golden files were made with --gqa 2 --eps 1e-5


def src(name):
    return models_dir() / "legacy" / f"stories260K-{name}.bin"


def _convert(name, tmp_path, **kw):
    return convert(src(name), tmp_path / f"{name}.gguf", progress=False, legacy={**LLAMACPP_ARGS, **kw})


@pytest.mark.parametrize("name", NAMES)
def test_tensors_and_metadata_equal_llamacpp(name, tmp_path):
    ours = GGUFFile(_convert(name, tmp_path))
    ref = GGUFFile(golden_dir() / "legacy" / f"stories260K-{name}.llamacpp.gguf")
    assert list(ours.metadata) == list(ref.metadata)  # same keys, same order
    for key, value in ref.metadata.items():
        assert ours.metadata_types[key] == ref.metadata_types[key], key
        if isinstance(value, np.ndarray):
            assert np.array_equal(ours.metadata[key], value), key
        else:
            assert ours.metadata[key] == value, key
    assert list(ours.tensors) == list(ref.tensors)
    for tname, t in ref.tensors.items():
        o = ours.tensors[tname]
        assert (o.ggml_type, o.shape) == (t.ggml_type, t.shape), tname
        assert np.array_equal(ours.tensor_bytes(tname), ref.tensor_bytes(tname)), tname


@pytest.mark.parametrize("name,model", [("ggjt1", "stories260K.gguf"), ("Q4_0-ggjt3", "stories260K-Q4_0.gguf")])
def test_converted_file_generates_golden_text(name, model, tmp_path):
    case = next(c for c in json.loads((golden_dir() / "greedy.json").read_text())["cases"] if c["model"] == model)
    out_path = _convert(name, tmp_path)
    out = subprocess.run([sys.executable, "-m", "llamacpy", "run", "-m", str(out_path), "-p", case["prompt"], "-n",
                          str(len(case["tokens"])), "--temp", "0"], capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode() == " " + case["prompt"] + case["text"] + "\n"


def test_llamacpp_defaults_and_flags(tmp_path):
    f = GGUFFile(convert(src("ggjt3"), tmp_path / "d.gguf", progress=False))  # no --gqa/--eps/-c
    assert f.metadata["llama.context_length"] == 2048
    assert f.metadata["llama.attention.head_count_kv"] == 8
    assert abs(f.metadata["llama.attention.layer_norm_rms_epsilon"] - 5e-6) < 1e-12
    f = GGUFFile(_convert("ggjt3", tmp_path, n_ctx=4096, gqa=4))
    assert f.metadata["llama.context_length"] == 4096 and f.metadata["llama.attention.head_count_kv"] == 2
    with pytest.raises(ConvertError, match="--gqa 3: 8 heads cannot be grouped by 3"):
        _convert("ggjt3", tmp_path, gqa=3)


def test_vocab_dir_takes_tokenizer_model(tmp_path):
    f = GGUFFile(_convert("ggjt3", tmp_path, vocab_dir=models_dir() / "meta-tiny-llama"))
    ref = GGUFFile(golden_dir() / "legacy" / "stories260K-ggjt3.llamacpp.gguf")
    assert f.metadata["tokenizer.ggml.tokens"] == ref.metadata["tokenizer.ggml.tokens"]  # the same tok512
    types = f.metadata["tokenizer.ggml.token_type"]
    assert all(types[i] == 6 for i, t in enumerate(f.metadata["tokenizer.ggml.tokens"]) if t.startswith("<0x"))


def _patched(tmp_path, name, version):
    data = bytearray(src(name).read_bytes())
    data[4:8] = version.to_bytes(4, "little")
    p = tmp_path / f"{name}-v{version}.bin"
    p.write_bytes(bytes(data))
    return p


@pytest.mark.parametrize("version,label", [(1, "GGJTv1"), (2, "GGJTv2")])
def test_pre_v3_quantized_is_refused_by_name(version, label, tmp_path):
    p = _patched(tmp_path, "Q4_0-ggjt3", version)
    with pytest.raises(ConvertError, match=rf"cannot convert a {label} file with MOSTLY_Q4_0: .*changed in GGJTv"):
        convert(p, tmp_path / "o.gguf", progress=False)
    out = subprocess.run([sys.executable, "-m", "llamacpy", "convert", str(p)], capture_output=True, timeout=120)
    err = out.stderr.decode().strip()
    assert out.returncode == 1 and "\n" not in err and label in err and "Traceback" not in err


@pytest.mark.parametrize("name,label", [("ggml", "GGMLv1"), ("ggmf1", "GGMFv1"), ("ggjt3", "GGJTv3")])
@pytest.mark.parametrize("cut", [10, 40, 3000, 500_000, -1])
def test_truncated_files_name_format_and_version(name, label, cut, tmp_path):
    data = src(name).read_bytes()
    p = tmp_path / "cut.bin"
    p.write_bytes(data[:cut])
    with pytest.raises(ConvertError, match=rf"truncated {label} file \(ends inside "):
        convert(p, tmp_path / "o.gguf", progress=False)
    assert not (tmp_path / "o.gguf").exists()


def test_unknown_version_and_magic(tmp_path):
    with pytest.raises(ConvertError, match="GGJT version 4 is not a known version"):
        convert(_patched(tmp_path, "ggjt3", 4), tmp_path / "o.gguf", progress=False)
    with pytest.raises(ConvertError, match="already a GGUF file"):
        from llamacpy.convert import ggml

        ggml.read(models_dir() / "stories260K.gguf")
