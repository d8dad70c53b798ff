"""A Llama-3-style Hugging Face checkpoint, built here (bf16 safetensors, tokenizer.json BPE vocab + merges,
rope_scaling llama3, tied embeddings, a chat template), converted as convert_hf_to_gguf.py would."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llamacpy.convert import convert
from llamacpy.convert.vocab import LLAMA3_PRE_REGEX
from llamacpy.gguf_file import GGUFFile
from test_convert_fixtures import bf16_to_f32, bf16_words, write_safetensors, write_torch_zip

N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF, N_LAYER = 64, 4, 2, 16, 96, 2
CHAT_TEMPLATE = "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{{ m.content }}<|eot_id|>{% endfor %}"


def byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def build_llama3(d, *, weights="safetensors"):
    chars = byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "Ġ")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    n_base = len(vocab)  # 260
    added = [("<|begin_of_text|>", True), ("<|end_of_text|>", True), ("<|start_header_id|>", True),
             ("<|end_header_id|>", True), ("<|eot_id|>", True), ("<|looks_special|>", False), ("▁hi", False)]
    added_tokens = [{"id": n_base + k, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": False, "special": s} for k, (t, s) in enumerate(added)]
    n_vocab = n_base + len(added) + 5  # padded: ids past the tokenizer become [PADi]
    tok = {
        "version": "1.0",
        "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PRE_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": [list(m) for m in merges]},
    }
    (d / "tokenizer.json").write_text(json.dumps(tok))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "chat_template": CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"}))
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": N_EMBD,
        "intermediate_size": N_FF, "num_attention_heads": N_HEAD, "num_key_value_heads": N_HEAD_KV,
        "num_hidden_layers": N_LAYER, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "vocab_size": n_vocab,
        "max_position_embeddings": 131072, "tie_word_embeddings": True,
        "bos_token_id": n_base, "eos_token_id": [n_base + 1, n_base + 4],
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    }
    (d / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(1)

    def w(*shape):  # (shape) bf16 words
        return bf16_words(rng.standard_normal(shape).astype(np.float32) * 0.1)

    t = {"model.embed_tokens.weight": w(n_vocab, N_EMBD), "model.norm.weight": w(N_EMBD)}
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        t.update({p + "self_attn.q_proj.weight": w(N_HEAD * HEAD_DIM, N_EMBD),
                  p + "self_attn.k_proj.weight": w(N_HEAD_KV * HEAD_DIM, N_EMBD),
                  p + "self_attn.v_proj.weight": w(N_HEAD_KV * HEAD_DIM, N_EMBD),
                  p + "self_attn.o_proj.weight": w(N_EMBD, N_HEAD * HEAD_DIM),
                  p + "mlp.gate_proj.weight": w(N_FF, N_EMBD), p + "mlp.up_proj.weight": w(N_FF, N_EMBD),
                  p + "mlp.down_proj.weight": w(N_EMBD, N_FF), p + "input_layernorm.weight": w(N_EMBD),
                  p + "post_attention_layernorm.weight": w(N_EMBD)})
    tensors = {k: (v, "BF16") for k, v in t.items()}
    if weights == "safetensors":
        write_safetensors(d / "model.safetensors", tensors)
    else:
        write_torch_zip(d / "pytorch_model.bin", tensors)
    return dict(vocab=vocab, added=added, merges=merges, n_base=n_base, n_vocab=n_vocab, tensors=t, cfg=cfg)


def unpermute_reference(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores each head's rotary pairs as [all first halves, all second halves]; llama.cpp interleaves them."""
    hd = w.shape[0] // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        for i in range(hd // 2):
            out[h * hd + 2 * i] = w[h * hd + i]
            out[h * hd + 2 * i + 1] = w[h * hd + hd // 2 + i]
    return out


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama3-style")
    info = build_llama3(d)
    info["gguf"] = GGUFFile(convert(d, d / "out-f32.gguf", "f32"))
    info["dir"] = d
    return info


def test_vocab_is_gpt2_bpe(llama3):
    md = llama3["gguf"].metadata
    n_base, n_vocab = llama3["n_base"], llama3["n_vocab"]
    assert md["tokenizer.ggml.model"] == "gpt2"
    assert md["tokenizer.ggml.pre"] == "llama-bpe"
    assert "tokenizer.ggml.scores" not in md
    tokens, types = list(md["tokenizer.ggml.tokens"]), list(md["tokenizer.ggml.token_type"])
    assert len(tokens) == n_vocab == md["llama.vocab_size"]
    assert tokens[:256] == byte_chars() and set(types[:n_base]) == {1}
    assert tokens[256:n_base] == ["Ġt", "he", "Ġthe", "ĠĠ"]
    # special added tokens and special-looking ones are CONTROL (3); others USER_DEFINED (4), ▁ -> space
    assert tokens[n_base:n_base + 7] == ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                         "<|end_header_id|>", "<|eot_id|>", "<|looks_special|>", " hi"]
    assert types[n_base:n_base + 7] == [3, 3, 3, 3, 3, 3, 4]
    assert tokens[n_base + 7:] == [f"[PAD{i}]" for i in range(n_base + 7, n_vocab)]
    assert set(types[n_base + 7:]) == {5}
    assert list(md["tokenizer.ggml.merges"]) == ["Ġ t", "h e", "Ġt he", "Ġ Ġ"]
    assert md["tokenizer.ggml.bos_token_id"] == n_base  # tokenizer_config name, resolved via added tokens
    assert md["tokenizer.ggml.eos_token_id"] == n_base + 4  # <|eot_id|>; config.json's list is not an id
    assert md["tokenizer.ggml.add_bos_token"] is True or md["tokenizer.ggml.add_bos_token"] == 1
    assert md["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert "tokenizer.ggml.add_space_prefix" not in md


def test_hparams(llama3):
    md, types = llama3["gguf"].metadata, llama3["gguf"].metadata_types
    assert md["llama.rope.freq_base"] == 500000.0 and types["llama.rope.freq_base"][0] == 6
    assert md["llama.context_length"] == 131072
    assert md["llama.rope.dimension_count"] == HEAD_DIM
    assert md["llama.attention.head_count_kv"] == N_HEAD_KV
    assert "llama.rope.scaling.type" not in md  # llama3 scaling travels as the rope_freqs tensor


def rope_factors_f64(base, dim, factor, low, high, old_ctx):
    out = []
    for k in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (k / dim)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out)


def test_rope_freqs(llama3):
    g = llama3["gguf"]
    assert list(g.tensors)[0] == "rope_freqs.weight"  # llama.cpp emits it before the checkpoint's tensors
    ti = g.tensors["rope_freqs.weight"]
    assert ti.type_name == "F32" and ti.shape == (HEAD_DIM // 2,)
    got = np.asarray(g.tensor("rope_freqs.weight"))
    np.testing.assert_allclose(got, rope_factors_f64(500000.0, HEAD_DIM, 8.0, 1.0, 4.0, 8192), rtol=1e-6)


def test_rope_freqs_match_llamacpp_file():
    """The shared llama3-style file (rope base 5e5, head_dim 16, Llama 3.1 scaling) carries llama.cpp's factors."""
    from shared import models_dir

    from llamacpy.convert.hf import llama3_rope_factors

    ref = GGUFFile(models_dir() / "llama3-style-f16.gguf")
    cfg = {"rope_theta": 500000.0, "head_dim": 16, "hidden_size": 64, "num_attention_heads": 4,
           "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    assert np.array_equal(llama3_rope_factors(cfg), np.asarray(ref.tensor("rope_freqs.weight")))


def test_tensors(llama3):
    g, t = llama3["gguf"], llama3["tensors"]
    assert "output.weight" not in g.tensors  # tied embeddings: llama.cpp reuses token_embd
    np.testing.assert_array_equal(np.asarray(g.tensor("token_embd.weight")),
                                  bf16_to_f32(t["model.embed_tokens.weight"]))
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        q = bf16_to_f32(t[p + "self_attn.q_proj.weight"])
        k = bf16_to_f32(t[p + "self_attn.k_proj.weight"])
        np.testing.assert_array_equal(np.asarray(g.tensor(f"blk.{i}.attn_q.weight")), unpermute_reference(q, N_HEAD))
        np.testing.assert_array_equal(np.asarray(g.tensor(f"blk.{i}.attn_k.weight")),
                                      unpermute_reference(k, N_HEAD_KV))
        np.testing.assert_array_equal(np.asarray(g.tensor(f"blk.{i}.ffn_down.weight")),
                                      bf16_to_f32(t[p + "mlp.down_proj.weight"]))


def test_bf16_out_keeps_words(llama3, tmp_path):
    g = GGUFFile(convert(llama3["dir"], tmp_path / "bf16.gguf", "bf16"))
    t = llama3["tensors"]
    assert g.tensors["blk.0.attn_v.weight"].type_name == "BF16"
    assert g.tensors["blk.0.attn_norm.weight"].type_name == "F32"
    assert g.tensors["rope_freqs.weight"].type_name == "F32"
    np.testing.assert_array_equal(np.asarray(g.tensor("blk.0.attn_v.weight")).view(np.uint16),
                                  t["model.layers.0.self_attn.v_proj.weight"])
    assert g.metadata["general.file_type"] == 32


def test_pytorch_bin_same_as_safetensors(llama3, tmp_path):
    d = tmp_path / "bin-llama3"
    d.mkdir()
    build_llama3(d, weights="bin")
    g = GGUFFile(convert(d, d / "out.gguf", "f32"))
    ref = llama3["gguf"]
    assert list(g.tensors) != [] and sorted(g.tensors) == sorted(ref.tensors)
    for name in ref.tensors:
        assert np.array_equal(np.asarray(g.tensor(name)), np.asarray(ref.tensor(name))), name


def test_rope_scaling_linear(tmp_path):
    d = tmp_path / "linear"
    d.mkdir()
    build_llama3(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_scaling"] = {"type": "linear", "factor": 4.0}
    (d / "config.json").write_text(json.dumps(cfg))
    g = GGUFFile(convert(d, d / "out.gguf", "f16", vocab_only=True))
    assert g.metadata["llama.rope.scaling.type"] == "linear"
    assert g.metadata["llama.rope.scaling.factor"] == 4.0
    assert g.metadata_types["llama.rope.scaling.factor"][0] == 6  # FLOAT32
    assert "rope_freqs.weight" not in g.tensors


def test_streaming_peak_memory(tmp_path):
    """Tensors are read, converted and written one at a time: peak Python/numpy allocation stays near a few
    times the largest tensor, far below the model."""
    import tracemalloc

    d = tmp_path / "big"
    d.mkdir()
    rng = np.random.default_rng(0)
    n_embd, n_layer = 256, 8
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": n_embd, "intermediate_size": 1024,
           "num_attention_heads": 8, "num_key_value_heads": 8, "num_hidden_layers": n_layer, "vocab_size": 512,
           "rms_norm_eps": 1e-5, "max_position_embeddings": 256, "tie_word_embeddings": True}
    (d / "config.json").write_text(json.dumps(cfg))
    build_dir = tmp_path / "tok"
    build_dir.mkdir()
    info = build_llama3(build_dir)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).write_text((build_dir / f).read_text())
    cfg["vocab_size"] = info["n_vocab"]
    (d / "config.json").write_text(json.dumps(cfg))
    t = {"model.embed_tokens.weight": bf16_words(rng.standard_normal((info["n_vocab"], n_embd))),
         "model.norm.weight": bf16_words(np.ones(n_embd))}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (n_embd, n_embd)), ("self_attn.k_proj", (n_embd, n_embd)),
                            ("self_attn.v_proj", (n_embd, n_embd)), ("self_attn.o_proj", (n_embd, n_embd)),
                            ("mlp.gate_proj", (1024, n_embd)), ("mlp.up_proj", (1024, n_embd)),
                            ("mlp.down_proj", (n_embd, 1024)), ("input_layernorm", (n_embd,)),
                            ("post_attention_layernorm", (n_embd,))):
            t[p + name + ".weight"] = bf16_words(rng.standard_normal(shape))
    write_safetensors(d / "model.safetensors", {k: (v, "BF16") for k, v in t.items()})
    total_f32 = sum(v.size for v in t.values()) * 4
    largest_f32 = max(v.size for v in t.values()) * 4
    del t
    tracemalloc.start()
    try:
        convert(d, d / "out.gguf", "f32")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (d / "out.gguf").stat().st_size > total_f32
    assert peak < 4 * largest_f32 + (2 << 20), (peak, largest_f32, total_f32)
    assert peak < total_f32 / 3
