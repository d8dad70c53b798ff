"""Hugging Face llama-architecture checkpoints -> GGUF, as llama.cpp's convert_hf_to_gguf.py does it.

Owns: reading config.json (LlamaForCausalLM / MistralForCausalLM), finding the weight files (model.safetensors,
sharded safetensors + index, pytorch_model*.bin), validating shapes against the config, the HF -> GGUF tensor
name map, undoing HF's Q/K rotary permutation, Llama 3 `rope_freqs.weight`, and the metadata in llama.cpp's
key order. Tensors are written shard by shard (sorted shard file names), sorted by HF name within a shard.

Must not: write files (it returns the plan: metadata + lazy tensor specs).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from gguf import GGUFValueType as VT

from ..gguf_writer import KV, TensorSpec
from .common import check_config, ConvertError, LazyTensor, OUTTYPES, encode, model_title, pick_type, size_label
from .pth import load_state_dict
from .safetensors import load_safetensors
from . import vocab as vocab_mod

ARCHITECTURES = ("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM")

_LAYER_MAP = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_GLOBAL_MAP = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
}
_SKIP_SUFFIXES = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")


def gguf_name(name: str) -> str | None:
    """GGUF name of an HF tensor, None for tensors llama.cpp drops."""
    if name.endswith(_SKIP_SUFFIXES):
        return None
    base, dot, suffix = name.rpartition(".")
    if suffix not in ("weight", "bias"):
        raise ConvertError(f"unexpected tensor name {name!r}")
    if base in _GLOBAL_MAP:
        return f"{_GLOBAL_MAP[base]}.{suffix}"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", base)
    if m and m.group(2) in _LAYER_MAP:
        return f"blk.{m.group(1)}.{_LAYER_MAP[m.group(2)]}.{suffix}"
    raise ConvertError(f"unexpected tensor name {name!r} (not part of a llama-architecture model)")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo HF's rotary permutation: within each head, rows [first halves..., second halves...] go back to
    interleaved pairs, llama.cpp's layout. w: (n_head * head_dim, ...) -> same shape."""
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def llama3_rope_factors(cfg: dict) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1 rope scaling, computed in float32 like convert_hf_to_gguf.py.
    Returns (head_dim // 2,) float32."""
    rs = cfg["rope_scaling"]
    for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        v = rs.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")):
            raise ConvertError(f"config.json: rope_scaling.{key} must be a positive number, got {v!r:.60}")
    base = float(cfg.get("rope_theta", 10000.0))
    dim = int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    f32 = np.float32
    exps = np.arange(0, dim, 2, dtype=np.float32) / f32(dim)  # (dim/2,)
    freqs = (f32(1.0) / np.power(f32(base), exps, dtype=np.float32)).astype(np.float32)
    factor = rs.get("factor", 8.0)
    low = rs.get("low_freq_factor", 1.0)
    high = rs.get("high_freq_factor", 4.0)
    old_ctx = rs.get("original_max_position_embeddings", 8192)
    low_wavelen = old_ctx / low
    high_wavelen = old_ctx / high
    if low_wavelen == high_wavelen:
        raise ConvertError("rope_scaling llama3: low_freq_factor equals high_freq_factor")
    out = []
    for freq in freqs:
        wavelen = f32(2 * math.pi) / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (f32(old_ctx) / wavelen - f32(low)) / f32(high - low)
            out.append(f32(1) / ((f32(1) - smooth) / f32(factor) + smooth))
    return np.array(out, dtype=np.float32)


def _weight_files(d: Path) -> list[Path]:
    """Weight files in write order; validates that every shard the index or file names promise exists."""
    for index_name, prefix, suffix in (("model.safetensors.index.json", "model", ".safetensors"),
                                       ("pytorch_model.bin.index.json", "pytorch_model", ".bin")):
        index = d / index_name
        if index.is_file():
            wm = vocab_mod.read_json(index).get("weight_map")
            if not isinstance(wm, dict) or not wm:
                raise ConvertError(f"{index}: no weight_map")
            files = sorted(set(wm.values()))
            missing = [f for f in files if not (d / f).is_file()]
            if missing:
                raise ConvertError(f"{d}: shard {missing[0]} listed in {index_name} is missing")
            return [d / f for f in files]
    for prefix, suffix in (("model", ".safetensors"), ("pytorch_model", ".bin")):
        files = sorted(p for p in d.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix))
        if files:
            for p in files:
                m = re.search(r"-(\d+)-of-(\d+)", p.name)
                if m:
                    total = int(m.group(2))
                    want = {re.sub(r"-(\d+)-of-", f"-{i:0{len(m.group(1))}d}-of-", p.name)
                            for i in range(1, total + 1)}
                    have = {q.name for q in files}
                    if want - have:
                        raise ConvertError(f"{d}: shard {sorted(want - have)[0]} is missing")
            return files
    raise ConvertError(f"{d}: no model weights (model*.safetensors or pytorch_model*.bin)")


def _load_file(p: Path) -> dict[str, LazyTensor]:
    return load_safetensors(p) if p.suffix == ".safetensors" else load_state_dict(p)


def plan(src: Path, outtype: str, vocab_only: bool = False) -> tuple[list[KV], list[TensorSpec]]:
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise ConvertError(f"{src}: config.json is missing")
    cfg = check_config(vocab_mod.read_json(cfg_path), cfg_path, ints={
        "num_hidden_layers": (True, 1, 4096), "hidden_size": (True, 1, 1 << 20),
        "num_attention_heads": (True, 1, 1 << 14), "intermediate_size": (True, 1, 1 << 22),
        "num_key_value_heads": (False, 0, 1 << 14), "head_dim": (False, 0, 1 << 14),
        "vocab_size": (False, 1, 1 << 24), "max_position_embeddings": (False, 0, 1 << 31),
        "n_ctx": (False, 0, 1 << 31), "n_embd": (False, 0, 1 << 20), "n_inner": (False, 0, 1 << 22),
        "n_head": (False, 0, 1 << 14)},
        floats={"rope_theta": False, "rms_norm_eps": False}, dicts=("rope_scaling",), strlists=("architectures",))
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if hd == 0 or hd % 2:
        raise ConvertError(f"{cfg_path}: head size {hd} (head_dim, or hidden_size / num_attention_heads) must be a "
                           "positive even number")
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else cfg.get("model_type", "?")
    if arch not in ARCHITECTURES:
        raise ConvertError(f"{cfg_path}: unsupported architecture {arch!r} "
                           f"(supported: {', '.join(ARCHITECTURES)})")
    if cfg.get("num_local_experts"):
        raise ConvertError(f"{cfg_path}: mixture-of-experts models are not supported")
    try:
        n_layer = int(cfg["num_hidden_layers"])
        n_embd = int(cfg["hidden_size"])
        n_head = int(cfg["num_attention_heads"])
        n_ff = int(cfg["intermediate_size"])
    except KeyError as e:
        raise ConvertError(f"{cfg_path}: missing {e.args[0]}") from None
    n_head_kv = int(cfg.get("num_key_value_heads") or n_head)
    head_dim = int(cfg.get("head_dim") or n_embd // n_head)
    n_vocab = cfg.get("vocab_size")

    # ---- tensors (read headers only)
    specs: list[TensorSpec] = []
    n_params = 0
    rope_scaling = cfg.get("rope_scaling") or {}
    if isinstance(rope_scaling, dict) and str(rope_scaling.get("rope_type", "")).lower() == "llama3":
        factors = llama3_rope_factors(cfg)  # (head_dim/2,)
        specs.append(TensorSpec("rope_freqs.weight", factors.shape, 0, lambda f=factors: f))
        n_params += factors.size
    if not vocab_only:
        shards = [(p, _load_file(p)) for p in _weight_files(src)]
        seen: dict[str, Path] = {}
        expected = _expected_shapes(cfg, n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab)
        for path, tensors in shards:
            for name in sorted(tensors):
                lt = tensors[name]
                new = gguf_name(name)
                if new is None:
                    continue
                if name in seen:
                    raise ConvertError(f"{src}: tensor {name} appears in both {seen[name].name} and {path.name}")
                seen[name] = path
                want = expected.get(new)
                if want is None:
                    raise ConvertError(f"{path}: tensor {name} is not expected for a {n_layer}-layer model")
                if lt.shape != want:
                    raise ConvertError(f"{path}: tensor {name} has shape {list(lt.shape)}, "
                                       f"expected {list(want)} from config.json")
                if name.endswith(("q_proj.weight", "q_proj.bias")):
                    lt = lt.map(lambda w: permute_qk(w, n_head))
                elif name.endswith(("k_proj.weight", "k_proj.bias")):
                    lt = lt.map(lambda w: permute_qk(w, n_head_kv))
                qtype = pick_type(new, lt.shape, outtype)
                specs.append(TensorSpec(new, lt.shape, int(qtype),
                                        lambda lt=lt, q=qtype: encode(lt.load(), lt.dtype, q)))
                n_params += lt.n_elements
        have = {s.name for s in specs}
        required = [k for k in expected if not k.endswith(".bias") and k != "output.weight"]
        missing = [k for k in required if k not in have]
        if missing:
            raise ConvertError(f"{src}: tensor {missing[0]} is missing from the weight files "
                               "(is a shard missing?)")

    # ---- metadata, in convert_hf_to_gguf.py's order
    kvs = [
        KV("general.architecture", "llama", VT.STRING),
        KV("general.type", "model", VT.STRING),
        KV("general.name", model_title(src.resolve().name), VT.STRING),
    ]
    if not vocab_only:
        kvs.append(KV("general.size_label", size_label(n_params), VT.STRING))
    kvs.append(KV("llama.block_count", n_layer, VT.UINT32))
    for keys, gkey in ((("max_position_embeddings", "n_ctx"), "llama.context_length"),
                       (("hidden_size", "n_embd"), "llama.embedding_length"),
                       (("intermediate_size", "n_inner"), "llama.feed_forward_length"),
                       (("num_attention_heads", "n_head"), "llama.attention.head_count")):
        v = next((cfg[k] for k in keys if cfg.get(k) is not None), None)
        if v is not None:
            kvs.append(KV(gkey, int(v), VT.UINT32))
    if cfg.get("num_key_value_heads") is not None:
        kvs.append(KV("llama.attention.head_count_kv", int(cfg["num_key_value_heads"]), VT.UINT32))
    if cfg.get("rope_theta") is not None:
        kvs.append(KV("llama.rope.freq_base", float(cfg["rope_theta"]), VT.FLOAT32))
    if cfg.get("rms_norm_eps") is not None:
        kvs.append(KV("llama.attention.layer_norm_rms_epsilon", float(cfg["rms_norm_eps"]), VT.FLOAT32))
    if cfg.get("head_dim") is not None:
        kvs.append(KV("llama.attention.key_length", int(cfg["head_dim"]), VT.UINT32))
        kvs.append(KV("llama.attention.value_length", int(cfg["head_dim"]), VT.UINT32))
    kvs.append(KV("general.file_type", OUTTYPES[outtype][1], VT.UINT32))
    if n_vocab is None:
        raise ConvertError(f"{cfg_path}: missing vocab_size")
    kvs.append(KV("llama.vocab_size", int(n_vocab), VT.UINT32))
    kvs.append(KV("llama.rope.dimension_count", head_dim, VT.UINT32))
    if isinstance(rope_scaling, dict) and "factor" in rope_scaling and rope_scaling.get("type") == "linear":
        f = rope_scaling["factor"]
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < float("inf"):
            raise ConvertError(f"{cfg_path}: rope_scaling.factor must be a positive number, got {f!r:.60}")
        kvs.append(KV("llama.rope.scaling.type", "linear", VT.STRING))
        kvs.append(KV("llama.rope.scaling.factor", float(rope_scaling["factor"]), VT.FLOAT32))

    # ---- vocabulary
    if (src / "tokenizer.model").is_file():
        v = vocab_mod.spm_vocab_hf(src, int(n_vocab))
        load_merges = False
    elif (src / "tokenizer.json").is_file():
        v = vocab_mod.bpe_vocab(src, int(n_vocab))
        load_merges = True
    else:
        raise ConvertError(f"{src}: no tokenizer (tokenizer.model or tokenizer.json)")
    kvs += vocab_mod.vocab_kvs(v)
    kvs += vocab_mod.special_vocab_kvs(src, len(v.tokens), load_merges)
    tc = src / "tokenizer_config.json"
    if tc.is_file():
        tcfg = vocab_mod.read_json(tc)
        if "add_prefix_space" in tcfg:
            kvs.append(KV("tokenizer.ggml.add_space_prefix", bool(tcfg["add_prefix_space"]), VT.BOOL))
    kvs.append(KV("general.quantization_version", 2, VT.UINT32))
    return kvs, specs


def _expected_shapes(cfg, n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab) -> dict[str, tuple]:
    """GGUF name -> shape (numpy order) that config.json implies."""
    exp: dict[str, tuple] = {}
    if n_vocab is not None:
        exp["token_embd.weight"] = (int(n_vocab), n_embd)
        exp["output.weight"] = (int(n_vocab), n_embd)
    exp["output_norm.weight"] = (n_embd,)
    q, kv = n_head * head_dim, n_head_kv * head_dim
    for i in range(n_layer):
        b = f"blk.{i}."
        exp[b + "attn_q.weight"] = (q, n_embd)
        exp[b + "attn_k.weight"] = (kv, n_embd)
        exp[b + "attn_v.weight"] = (kv, n_embd)
        exp[b + "attn_output.weight"] = (n_embd, q)
        exp[b + "ffn_gate.weight"] = (n_ff, n_embd)
        exp[b + "ffn_up.weight"] = (n_ff, n_embd)
        exp[b + "ffn_down.weight"] = (n_embd, n_ff)
        exp[b + "attn_norm.weight"] = (n_embd,)
        exp[b + "ffn_norm.weight"] = (n_embd,)
        if cfg.get("attention_bias"):
            exp[b + "attn_q.bias"] = (q,)
            exp[b + "attn_k.bias"] = (kv,)
            exp[b + "attn_v.bias"] = (kv,)
            exp[b + "attn_output.bias"] = (n_embd,)
    return exp
