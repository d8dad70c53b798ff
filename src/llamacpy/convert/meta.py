"""Meta's original checkpoints (params.json + consolidated.NN.pth) -> GGUF, as convert_legacy_llama.py does it.

Owns: finding and validating the model-parallel shards, merging each tensor lazily across shards (split along
columns for tok_embeddings / attention.wo / feed_forward.w2, along rows for the other matrices, 1-D tensors
replicated), the Meta -> GGUF name map (Meta's Q/K are already in llama.cpp's rotary layout), n_ff and n_vocab
from the weights, the context-length guess from norm_eps, and the legacy converter's metadata order.

Must not: write files (it returns the plan: metadata + lazy tensor specs).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from gguf import GGUFValueType as VT

from ..gguf_writer import KV, TensorSpec
from .common import check_config, ConvertError, LazyTensor, OUTTYPES, encode, model_title, size_label
from .pth import load_state_dict
from . import vocab as vocab_mod

_LAYER_MAP = {
    "attention.wq": "attn_q",
    "attention.wk": "attn_k",
    "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "feed_forward.w1": "ffn_gate",
    "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up",
    "attention_norm": "attn_norm",
    "ffn_norm": "ffn_norm",
}
_GLOBAL_MAP = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}
_SKIP = ("rope.freqs",)


def gguf_name(name: str) -> str | None:
    base, _, suffix = name.rpartition(".")
    if name in _SKIP or base in _SKIP:
        return None
    if base in _GLOBAL_MAP:
        return f"{_GLOBAL_MAP[base]}.{suffix}"
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", base)
    if m and m.group(2) in _LAYER_MAP:
        return f"blk.{m.group(1)}.{_LAYER_MAP[m.group(2)]}.{suffix}"
    raise ConvertError(f"unexpected tensor name {name!r} in a Meta checkpoint")


def _split_axis(name: str) -> int:
    """Axis along which Meta's model-parallel layers split a 2-D weight."""
    if name.startswith("tok_embeddings.") or name.endswith((".attention.wo.weight", ".feed_forward.w2.weight")):
        return 1
    return 0


def _merge(name: str, parts: list[LazyTensor]) -> LazyTensor:
    first = parts[0]
    if len(parts) == 1 or len(first.shape) == 1:
        return first  # single shard, or replicated 1-D tensor
    axis = _split_axis(name)
    shape = list(first.shape)
    shape[axis] = sum(p.shape[axis] for p in parts)

    def load() -> np.ndarray:
        return np.concatenate([p.load() for p in parts], axis=axis)

    return LazyTensor(tuple(shape), first.dtype, load)


def find_shards(src: Path) -> list[Path]:
    shards = sorted(src.glob("consolidated.*.pth"))
    if not shards:
        raise ConvertError(f"{src}: no consolidated.NN.pth weight files")
    nums = []
    for p in shards:
        m = re.fullmatch(r"consolidated\.(\d+)\.pth", p.name)
        if not m:
            raise ConvertError(f"{p}: unexpected shard file name")
        nums.append(int(m.group(1)))
    for i in range(max(nums) + 1):
        if i not in nums:
            width = len(re.fullmatch(r"consolidated\.(\d+)\.pth", shards[0].name).group(1))
            raise ConvertError(f"{src}: shard consolidated.{i:0{width}d}.pth is missing")
    return shards


def find_tokenizer(src: Path) -> Path:
    for d in (src, src.parent):
        if (d / "tokenizer.model").is_file():
            return d / "tokenizer.model"
    raise ConvertError(f"{src}: tokenizer.model not found here or in the parent folder")


def plan(src: Path, outtype: str, vocab_only: bool = False) -> tuple[list[KV], list[TensorSpec]]:
    params_path = src / "params.json"
    if not params_path.is_file():
        raise ConvertError(f"{src}: params.json is missing")
    params = check_config(vocab_mod.read_json(params_path), params_path, ints={
        "dim": (True, 1, 1 << 20), "n_layers": (True, 1, 4096), "n_heads": (True, 1, 1 << 14),
        "n_kv_heads": (False, 0, 1 << 14), "vocab_size": (False, -1, 1 << 24), "multiple_of": (False, 0, 1 << 20)},
        floats={"norm_eps": True, "rope_theta": False})
    if params["dim"] % params["n_heads"] or (params["dim"] // params["n_heads"]) % 2:
        raise ConvertError(f"{params_path}: dim {params['dim']} must be n_heads ({params['n_heads']}) times an "
                           "even head size")
    try:
        n_embd, n_layer, n_head, eps = (int(params["dim"]), int(params["n_layers"]), int(params["n_heads"]),
                                        float(params["norm_eps"]))
    except KeyError as e:
        raise ConvertError(f"{params_path}: missing {e.args[0]}") from None
    if params.get("moe"):
        raise ConvertError(f"{params_path}: mixture-of-experts checkpoints are not supported")
    n_head_kv = int(params.get("n_kv_heads") or n_head)
    head_dim = n_embd // n_head
    # context length: not in params.json; llama.cpp guesses the generation
    if params.get("rope_theta") == 1000000:
        n_ctx = 16384  # CodeLlama
    elif eps == 1e-5:
        n_ctx = 4096  # LLaMA 2
    else:
        n_ctx = 2048  # LLaMA 1
    tokenizer_path = find_tokenizer(src)
    v = vocab_mod.spm_vocab_legacy(tokenizer_path)

    # ---- shards: same tensors, same shapes in each; merged lazily
    shard_paths = find_shards(src)
    shards = [load_state_dict(p) for p in shard_paths]
    names = list(shards[0])
    for p, sd in zip(shard_paths[1:], shards[1:]):
        if set(sd) != set(names):
            diff = sorted(set(sd) ^ set(names))
            raise ConvertError(f"{p.name}: tensors differ from {shard_paths[0].name} (e.g. {diff[0]})")
        for n in names:
            if sd[n].shape != shards[0][n].shape or sd[n].dtype != shards[0][n].dtype:
                raise ConvertError(f"{p.name}: tensor {n} has shape {list(sd[n].shape)} ({sd[n].dtype}), but "
                                   f"{shard_paths[0].name} has {list(shards[0][n].shape)} ({shards[0][n].dtype})")
    merged = {n: _merge(n, [sd[n] for sd in shards]) for n in names}
    if "tok_embeddings.weight" not in merged:
        raise ConvertError(f"{src}: tok_embeddings.weight is missing")
    n_vocab = merged["tok_embeddings.weight"].shape[0]
    w1 = merged.get("layers.0.feed_forward.w1.weight")
    if w1 is None:
        raise ConvertError(f"{src}: layers.0.feed_forward.w1.weight is missing")
    n_ff = w1.shape[0]
    if len(v.tokens) != n_vocab:
        raise ConvertError(f"{tokenizer_path}: vocabulary has {len(v.tokens)} tokens but the model has {n_vocab}")

    expected = _expected_shapes(n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab)
    specs: list[TensorSpec] = []
    n_params = 0
    for name, lt in merged.items():
        n_params += lt.n_elements
        new = gguf_name(name)
        if new is None:
            continue
        want = expected.get(new)
        if want is None:
            raise ConvertError(f"{src}: tensor {name} is not expected for a {n_layer}-layer model")
        if lt.shape != want:
            raise ConvertError(f"{src}: merged tensor {name} has shape {list(lt.shape)}, expected {list(want)} "
                               f"from params.json ({len(shards)} shards; is a shard missing?)")
        qtype = _legacy_type(lt.shape, outtype)
        specs.append(TensorSpec(new, lt.shape, int(qtype), lambda lt=lt, q=qtype: encode(lt.load(), lt.dtype, q)))
    missing = [k for k in expected if k not in {s.name for s in specs}]
    if missing:
        raise ConvertError(f"{src}: tensor for {missing[0]} is missing")
    if vocab_only:
        specs = []

    kvs = [
        KV("general.architecture", "llama", VT.STRING),
        KV("general.name", model_title(src.resolve().name), VT.STRING),
        KV("general.size_label", size_label(n_params), VT.STRING),
        KV("llama.vocab_size", n_vocab, VT.UINT32),
        KV("llama.context_length", n_ctx, VT.UINT32),
        KV("llama.embedding_length", n_embd, VT.UINT32),
        KV("llama.block_count", n_layer, VT.UINT32),
        KV("llama.feed_forward_length", n_ff, VT.UINT32),
        KV("llama.rope.dimension_count", head_dim, VT.UINT32),
        KV("llama.attention.head_count", n_head, VT.UINT32),
        KV("llama.attention.head_count_kv", n_head_kv, VT.UINT32),
        KV("llama.attention.layer_norm_rms_epsilon", eps, VT.FLOAT32),
    ]
    if params.get("rope_theta") is not None:
        kvs.append(KV("llama.rope.freq_base", float(params["rope_theta"]), VT.FLOAT32))
    kvs.append(KV("general.file_type", OUTTYPES[outtype][1], VT.UINT32))
    kvs += vocab_mod.vocab_kvs(v)
    kvs += vocab_mod.special_vocab_kvs(src, len(v.tokens), load_merges=False)
    return kvs, specs


def _legacy_type(shape: tuple[int, ...], outtype: str):
    """convert_legacy_llama.py: 1-D tensors F32, the rest the output type (Q8_0 falls back to F16 when rows are
    not a multiple of 32)."""
    from gguf import GGMLQuantizationType as QT

    if len(shape) <= 1:
        return QT.F32
    qtype = OUTTYPES[outtype][0]
    if qtype == QT.Q8_0 and shape[-1] % 32 != 0:
        return QT.F16
    return qtype


def _expected_shapes(n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab) -> dict[str, tuple]:
    exp = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,),
           "output.weight": (n_vocab, n_embd)}
    q, kv = n_head * head_dim, n_head_kv * head_dim
    for i in range(n_layer):
        b = f"blk.{i}."
        exp.update({b + "attn_q.weight": (q, n_embd), b + "attn_k.weight": (kv, n_embd),
                    b + "attn_v.weight": (kv, n_embd), b + "attn_output.weight": (n_embd, q),
                    b + "ffn_gate.weight": (n_ff, n_embd), b + "ffn_down.weight": (n_embd, n_ff),
                    b + "ffn_up.weight": (n_ff, n_embd), b + "attn_norm.weight": (n_embd,),
                    b + "ffn_norm.weight": (n_embd,)})
    return exp
