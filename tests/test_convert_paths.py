"""Converter paths beyond the golden folders: the chat template beside tokenizer_config.json (chat_template.jinja /
.json), sharded pytorch_model-*.bin + index and F16 safetensors (both must give llama.cpp's F32 conversion's
tensors), missing or duplicate tensors, a missing tokenizer, and the default output names."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cli_inproc import run_cli
from llamacpy.convert import convert
from llamacpy.convert.safetensors import load_safetensors
from llamacpy.gguf_file import GGUFFile
from shared import golden_dir, models_dir
from test_convert_fixtures import write_safetensors, write_torch_zip
from test_convert_golden import assert_same_tensors

SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def hf_copy(tmp_path, with_weights=True):
    dst = tmp_path / "hf-tiny-llama"
    dst.mkdir()
    for p in (models_dir() / "hf-tiny-llama").iterdir():
        if with_weights or not (p.suffix == ".safetensors" or p.name.endswith(".index.json")):
            shutil.copy(p, dst / p.name)
    return dst


def shard_tensors(name):
    """{tensor name: (array, dtype)} of one shard of the checkpoint (bf16 as uint16 words)."""
    st = load_safetensors(models_dir() / "hf-tiny-llama" / name)
    return {n: (st[n].load(), st[n].dtype) for n in st}


def template_of(src, tmp_path):
    out = convert(src, tmp_path / "v.gguf", "f32", vocab_only=True, progress=False)
    return GGUFFile(out).metadata.get("tokenizer.chat_template")


# -- chat templates --------------------------------------------------------------------------------------------
def test_chat_template_jinja_beside_tokenizer_config(tmp_path):
    src = hf_copy(tmp_path, with_weights=False)
    assert template_of(src, tmp_path) is None  # this checkpoint has none anywhere
    (src / "chat_template.jinja").write_text(TEMPLATE)
    assert template_of(src, tmp_path) == TEMPLATE


def test_chat_template_json_and_precedence(tmp_path):
    src = hf_copy(tmp_path, with_weights=False)
    (src / "chat_template.json").write_text(json.dumps({"chat_template": TEMPLATE + "json"}))
    assert template_of(src, tmp_path) == TEMPLATE + "json"
    (src / "chat_template.jinja").write_text(TEMPLATE + "jinja")  # .jinja before .json, as gguf-py
    assert template_of(src, tmp_path) == TEMPLATE + "jinja"
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps(dict(cfg, chat_template=TEMPLATE + "cfg")))
    assert template_of(src, tmp_path) == TEMPLATE + "cfg"  # tokenizer_config.json's own template wins


def test_additional_chat_templates_are_named(tmp_path):
    src = hf_copy(tmp_path, with_weights=False)
    (src / "chat_template.jinja").write_text(TEMPLATE)
    (src / "additional_chat_templates").mkdir()
    (src / "additional_chat_templates" / "tool-use.jinja").write_text(TEMPLATE + "tools")
    md = GGUFFile(convert(src, tmp_path / "v.gguf", "f32", vocab_only=True, progress=False)).metadata
    assert md["tokenizer.chat_template"] == TEMPLATE
    assert md["tokenizer.chat_template.tool_use"] == TEMPLATE + "tools"
    assert list(md["tokenizer.chat_templates"]) == ["tool_use"]


# -- weight formats ----------------------------------------------------------------------------------------------
def test_sharded_pytorch_bin_with_index_gives_llama_cpp_tensors(tmp_path):
    src = hf_copy(tmp_path, with_weights=False)
    weight_map = {}
    for i, shard in enumerate(SHARDS, 1):
        name = f"pytorch_model-0000{i}-of-00002.bin"
        tensors = shard_tensors(shard)
        write_torch_zip(src / name, tensors)
        weight_map.update({n: name for n in tensors})
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = convert(src, tmp_path / "o.gguf", "f32", progress=False)
    assert_same_tensors(GGUFFile(out), GGUFFile(golden_dir() / "hf-tiny-llama" / "llamacpp-f32.gguf"))


def test_f16_safetensors_give_llama_cpp_tensors(tmp_path):
    # 2-D weights stored as F16 (rounded from the bf16 values as llama.cpp's f16 conversion rounds them), the norms
    # kept in bf16: --outtype f16 must pass them through to exactly llama.cpp's f16 file
    src = hf_copy(tmp_path, with_weights=True)
    for shard in SHARDS:
        tensors = {}
        for n, (words, dtype) in shard_tensors(shard).items():
            assert dtype == "BF16"
            f32 = (words.astype(np.uint32) << 16).view(np.float32)
            tensors[n] = (f32.astype(np.float16), "F16") if words.ndim == 2 else (words, dtype)
        write_safetensors(src / shard, tensors)
    out = convert(src, tmp_path / "o.gguf", "f16", progress=False)
    assert_same_tensors(GGUFFile(out), GGUFFile(golden_dir() / "hf-tiny-llama" / "llamacpp-f16.gguf"))


# -- errors ------------------------------------------------------------------------------------------------------
def _convert_error(capsys, src, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = run_cli(capsys, "convert", src, "--outtype", "f32", "--outfile", out_dir / "o.gguf")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert list(out_dir.iterdir()) == []
    return r.stderr


def test_missing_tensor(capsys, tmp_path):
    src = hf_copy(tmp_path)
    tensors = shard_tensors(SHARDS[1])
    dropped = sorted(t for t in tensors if t.endswith("mlp.up_proj.weight"))[0]
    del tensors[dropped]
    write_safetensors(src / SHARDS[1], tensors)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    del index["weight_map"][dropped]
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    err = _convert_error(capsys, src, tmp_path)
    assert "ffn_up.weight is missing from the weight files" in err


def test_duplicate_tensor(capsys, tmp_path):
    src = hf_copy(tmp_path)
    first, second = shard_tensors(SHARDS[0]), shard_tensors(SHARDS[1])
    name = sorted(first)[0]
    second[name] = first[name]
    write_safetensors(src / SHARDS[1], second)
    err = _convert_error(capsys, src, tmp_path)
    assert f"tensor {name} appears in both {SHARDS[0]} and {SHARDS[1]}" in err


def test_missing_tokenizer(capsys, tmp_path):
    src = hf_copy(tmp_path)
    (src / "tokenizer.model").unlink()
    assert "no tokenizer (tokenizer.model or tokenizer.json)" in _convert_error(capsys, src, tmp_path)


# -- default output names ------------------------------------------------------------------------------------------
def test_default_output_names(tmp_path):
    src = hf_copy(tmp_path, with_weights=False)
    assert convert(src, None, "f32", vocab_only=True, progress=False) == src / "ggml-vocab-hf-tiny-llama.gguf"
    bin_dir = tmp_path / "l2c"
    bin_dir.mkdir()
    for f in ("stories260K.bin", "tok512.bin"):
        shutil.copy(models_dir() / "llama2c" / f, bin_dir / f)
    assert convert(bin_dir / "stories260K.bin", None, "f32", progress=False) == bin_dir / "stories260K.gguf"
    assert convert(bin_dir / "stories260K.bin", None, "f32", vocab_only=True, progress=False) == \
        bin_dir / "stories260K-vocab.gguf"


def test_default_hf_output_name(tmp_path):
    src = hf_copy(tmp_path)
    out = convert(src, None, "f16", progress=False)
    assert out == src / "ggml-model-f16.gguf" and out.is_file()
