"""llama2.c checkpoints (.bin) + tokenizer (.bin) -> GGUF, as llama-convert-llama2c-to-ggml does it.

Owns: the llama2.c header (7 int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (negative:
separate classifier), seq_len), the weight layout that follows (stacked per layer, Meta rotary layout, then
freq_cis tables to skip, then the classifier when not shared), the tensor order and metadata that converter
writes (context_length is its default 128, not the checkpoint's seq_len).

Must not: write files (it returns the plan: metadata + lazy tensor specs).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np
from gguf import GGUFValueType as VT

from ..gguf_writer import KV, TensorSpec
from .common import ConvertError, encode, pick_type
from . import vocab as vocab_mod

N_CTX_DEFAULT = 128  # llama-convert-llama2c-to-ggml's default context length


def find_vocab(model_path: Path) -> Path:
    d = model_path.parent
    if (d / "tokenizer.bin").is_file():
        return d / "tokenizer.bin"
    cands = [p for p in d.glob("tok*.bin") if p != model_path]
    if len(cands) == 1:
        return cands[0]
    raise ConvertError(f"{model_path}: llama2.c tokenizer not found next to it (tokenizer.bin or tok*.bin); "
                       "pass --vocab PATH")


def plan(model_path: Path, vocab_path: Path | None, outtype: str, vocab_only: bool = False,
         n_ctx: int = N_CTX_DEFAULT) -> tuple[list[KV], list[TensorSpec]]:
    try:
        f = open(model_path, "rb")
    except OSError as e:
        raise ConvertError(f"{model_path}: cannot open ({e.strerror})") from None
    with f:
        head = f.read(28)
        if len(head) < 28:
            raise ConvertError(f"{model_path}: truncated llama2.c checkpoint header")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    dim, hidden, n_layer, n_head, n_head_kv, vocab, seq_len = struct.unpack("<7i", head)
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, n_layer, n_head, n_head_kv, vocab, seq_len) <= 0 or dim % n_head:
        raise ConvertError(f"{model_path}: not a llama2.c checkpoint (header {head.hex()})")
    head_size = dim // n_head
    kv_dim = n_head_kv * head_size

    # float offsets of each stacked array in the file, in file order
    layout = [
        ("token_embedding", (vocab, dim)),
        ("rms_att", (n_layer, dim)),
        ("wq", (n_layer, dim, dim)),
        ("wk", (n_layer, kv_dim, dim)),
        ("wv", (n_layer, kv_dim, dim)),
        ("wo", (n_layer, dim, dim)),
        ("rms_ffn", (n_layer, dim)),
        ("w1", (n_layer, hidden, dim)),
        ("w2", (n_layer, dim, hidden)),
        ("w3", (n_layer, hidden, dim)),
        ("rms_final", (dim,)),
        ("freq_cis", (seq_len, head_size)),  # real and imaginary halves, skipped
    ]
    if not shared:
        layout.append(("wcls", (vocab, dim)))
    arrays: dict[str, np.ndarray] = {}
    pos = 28
    for name, shape in layout:
        n = int(np.prod(shape))
        if pos + 4 * n > len(mm):
            raise ConvertError(f"{model_path}: truncated llama2.c checkpoint (ends inside {name}; file has "
                               f"{len(mm)} bytes, header implies at least {pos + 4 * n})")
        arrays[name] = np.frombuffer(mm, dtype="<f4", count=n, offset=pos).reshape(shape)
        pos += 4 * n

    vpath = vocab_path or find_vocab(model_path)
    v = vocab_mod.llama2c_vocab(vpath, vocab)

    kvs = vocab_mod.vocab_kvs(v, with_pre=False)
    kvs = [kvs[1], kvs[2], kvs[3], kvs[0]]  # tokens, scores, token_type, then model
    kvs += [
        KV("general.architecture", "llama", VT.STRING),
        KV("general.name", "llama", VT.STRING),
        KV("tokenizer.ggml.unknown_token_id", 0, VT.UINT32),
        KV("tokenizer.ggml.bos_token_id", 1, VT.UINT32),
        KV("tokenizer.ggml.eos_token_id", 2, VT.UINT32),
        KV("tokenizer.ggml.seperator_token_id", 0xFFFFFFFF, VT.UINT32),
        KV("tokenizer.ggml.padding_token_id", 0xFFFFFFFF, VT.UINT32),
        KV("llama.context_length", n_ctx, VT.UINT32),
        KV("llama.embedding_length", dim, VT.UINT32),
        KV("llama.feed_forward_length", hidden, VT.UINT32),
        KV("llama.attention.head_count", n_head, VT.UINT32),
        KV("llama.attention.head_count_kv", n_head_kv, VT.UINT32),
        KV("llama.block_count", n_layer, VT.UINT32),
        KV("llama.rope.dimension_count", head_size, VT.UINT32),
        KV("llama.attention.layer_norm_rms_epsilon", 1e-5, VT.FLOAT32),
    ]
    if vocab_only:
        return kvs, []

    order: list[tuple[str, np.ndarray]] = [
        ("token_embd.weight", arrays["token_embedding"]),
        ("output_norm.weight", arrays["rms_final"]),
        ("output.weight", arrays["token_embedding"] if shared else arrays["wcls"]),
    ]
    for i in range(n_layer):
        b = f"blk.{i}."
        order += [
            (b + "attn_q.weight", arrays["wq"][i]),
            (b + "attn_k.weight", arrays["wk"][i]),
            (b + "attn_v.weight", arrays["wv"][i]),
            (b + "attn_output.weight", arrays["wo"][i]),
            (b + "attn_norm.weight", arrays["rms_att"][i]),
            (b + "ffn_gate.weight", arrays["w1"][i]),
            (b + "ffn_down.weight", arrays["w2"][i]),
            (b + "ffn_up.weight", arrays["w3"][i]),
            (b + "ffn_norm.weight", arrays["rms_ffn"][i]),
        ]
    specs = []
    for name, arr in order:
        qtype = pick_type(name, arr.shape, outtype)
        specs.append(TensorSpec(name, arr.shape, int(qtype), lambda a=arr, q=qtype: encode(a, "F32", q)))
    return kvs, specs
