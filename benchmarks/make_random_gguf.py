"""Write a random-weight llama GGUF of a given shape and weight type, for benchmarks.

Usage: python benchmarks/make_random_gguf.py OUT.gguf [--type Q4_0] [--dim 2048] [--layers 22] [--heads 32]
       [--kv-heads 4] [--ffn 5632] [--vocab 32000] [--ctx 2048] [--seed 0]
Defaults are TinyLlama-1.1B's shape. --type: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K
(every matrix of that type, norms F32, except that output.weight is Q6_K for the 2-6 bit types as
llama-quantize does, unless --pure), or Q4_K_M (an approximation of llama-quantize's mix: output
Q6_K, attn_v/ffn_down Q6_K on the layers llama.cpp's use_more_bits picks, all else Q4_K; the exact mix comes from
`llamacpy quantize` on the F16 file). Quantized blocks are random bytes with sane f16 scales (no quantizer run),
so any size is written in seconds. The vocab is SentencePiece-style (<unk>, <s>, </s>, <0x00>..<0xFF>, fillers)
so the file loads and tokenizes. Written through llamacpy.gguf_writer (streamed, atomic rename).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from gguf import GGUFValueType as V

from llamacpy.gguf_file import GGML_TYPES
from llamacpy.gguf_writer import KV, TensorSpec, write_gguf

NAMES = {v[0]: k for k, v in GGML_TYPES.items()}
# (byte offset, magnitude) of each f16 scale field per block type; magnitudes keep activations O(1)
SCALES = {2: [(0, 2e-3)], 3: [(0, 2e-3), (2, -1e-2)], 6: [(0, 1e-3)], 7: [(0, 1e-3), (2, -1e-2)], 8: [(0, 2e-4)],
          10: [(80, 2e-3), (82, 1e-3)], 11: [(108, 5e-4)], 12: [(0, 5e-4), (2, 5e-4)], 13: [(0, 3e-4), (2, 3e-4)],
          14: [(208, 2e-5)]}
FILE_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K": 12,
             "Q4_K": 14, "Q4_K_M": 15, "Q5_K": 16, "Q6_K": 18, "BF16": 32}


def random_tensor(typ: int, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random data for a (n_out, n_in) matrix of ggml type `typ` (the bytes a GGUF holds)."""
    n_out, n_in = shape
    if typ in (0, 1, 30):
        w = rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(0.02)
        if typ == 0:
            return w
        if typ == 1:
            return w.astype(np.float16)
        return (w.view(np.uint32) >> 16).astype(np.uint16)
    _, block, nbytes = GGML_TYPES[typ]
    nb = n_in // block
    raw = rng.integers(0, 256, (n_out, nb, nbytes), dtype=np.uint8)
    for off, mag in SCALES[typ]:
        d = (rng.random((n_out, nb), dtype=np.float32) * np.float32(mag) + np.float32(mag) * 0.5).astype(np.float16)
        raw[:, :, off:off + 2] = d.view(np.uint8).reshape(n_out, nb, 2)
    return raw


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def vocab_kvs(n_vocab: int) -> list[KV]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(tokens) < n_vocab:  # filler pieces: "▁a".."▁z", then two-letter words, ...
        w, k = "", i
        while True:
            w = letters[k % 26] + w
            k = k // 26 - 1
            if k < 0:
                break
        tokens.append(("\u2581" if i % 2 == 0 else "") + w)
        types.append(1)
        i += 1
    tokens = tokens[:n_vocab]
    scores = [0.0] * 3 + [0.0] * 256 + [-float(j) for j in range(n_vocab - 259)]
    return [
        KV("tokenizer.ggml.model", "llama", V.STRING),
        KV("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING),
        KV("tokenizer.ggml.scores", scores[:n_vocab], V.ARRAY, V.FLOAT32),
        KV("tokenizer.ggml.token_type", types[:n_vocab], V.ARRAY, V.INT32),
        KV("tokenizer.ggml.bos_token_id", 1, V.UINT32),
        KV("tokenizer.ggml.eos_token_id", 2, V.UINT32),
        KV("tokenizer.ggml.unknown_token_id", 0, V.UINT32),
        KV("tokenizer.ggml.add_bos_token", True, V.BOOL),
        KV("tokenizer.ggml.add_eos_token", False, V.BOOL),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--type", default="Q4_0")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pure", action="store_true", help="output.weight in the same type as the rest")
    a = ap.parse_args(argv)
    ftype = a.type.upper()
    if ftype not in FILE_TYPE:
        ap.error(f"unknown type {a.type!r}; choose from {', '.join(FILE_TYPE)}")
    mix = ftype == "Q4_K_M"
    base = NAMES["Q4_K"] if mix else NAMES[ftype]
    hd = a.dim // a.heads
    rng = np.random.default_rng(a.seed)

    def mat(name, shape, typ):
        return TensorSpec(name, shape, typ, lambda: random_tensor(typ, shape, rng))

    def norm(name, n):
        return TensorSpec(name, (n,), 0, lambda: np.ones(n, np.float32))

    out_type = base if a.pure or ftype in ("F32", "F16", "BF16", "Q8_0", "Q6_K") else NAMES["Q6_K"]
    tensors = [mat("token_embd.weight", (a.vocab, a.dim), base)]
    for i in range(a.layers):
        p = f"blk.{i}."
        more = mix and use_more_bits(i, a.layers)
        tensors += [
            norm(p + "attn_norm.weight", a.dim),
            mat(p + "attn_q.weight", (a.dim, a.dim), base),
            mat(p + "attn_k.weight", (a.kv_heads * hd, a.dim), base),
            mat(p + "attn_v.weight", (a.kv_heads * hd, a.dim), NAMES["Q6_K"] if more else base),
            mat(p + "attn_output.weight", (a.dim, a.dim), base),
            norm(p + "ffn_norm.weight", a.dim),
            mat(p + "ffn_gate.weight", (a.ffn, a.dim), base),
            mat(p + "ffn_up.weight", (a.ffn, a.dim), base),
            mat(p + "ffn_down.weight", (a.dim, a.ffn), NAMES["Q6_K"] if more else base),
        ]
    tensors += [norm("output_norm.weight", a.dim),
                mat("output.weight", (a.vocab, a.dim), out_type)]
    kvs = [
        KV("general.architecture", "llama", V.STRING),
        KV("general.name", f"random-{a.dim}x{a.layers}-{ftype}", V.STRING),
        KV("general.file_type", FILE_TYPE[ftype], V.UINT32),
        KV("general.quantization_version", 2, V.UINT32),
        KV("llama.context_length", a.ctx, V.UINT32),
        KV("llama.embedding_length", a.dim, V.UINT32),
        KV("llama.block_count", a.layers, V.UINT32),
        KV("llama.feed_forward_length", a.ffn, V.UINT32),
        KV("llama.attention.head_count", a.heads, V.UINT32),
        KV("llama.attention.head_count_kv", a.kv_heads, V.UINT32),
        KV("llama.rope.dimension_count", hd, V.UINT32),
        KV("llama.rope.freq_base", 10000.0, V.FLOAT32),
        KV("llama.attention.layer_norm_rms_epsilon", 1e-5, V.FLOAT32),
        KV("llama.vocab_size", a.vocab, V.UINT32),
    ] + vocab_kvs(a.vocab)
    write_gguf(a.out, kvs, tensors)
    total = sum(t.nbytes for t in tensors)
    print(f"wrote {a.out}: {ftype}, {total / 2**20:.1f} MiB of tensors, {len(tensors)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
