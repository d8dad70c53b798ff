"""Tiny random llama GGUF files written with the project's own writer, for tests that need no golden data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFValueType as VT

from llamacpy.gguf_file import GGML_TYPES
from llamacpy.gguf_writer import KV, TensorSpec, write_gguf


def spm_vocab(n_extra: int = 64) -> tuple[list[str], list[float], list[int]]:
    """<unk> <s> </s>, 256 byte tokens, single letters and a few pieces; scores favour longer pieces."""
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(6)
    pieces = ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + [
        "\u2581t", "he", "\u2581the", "\u2581a", "in", "an", "\u2581and", "er", "on", "\u2581w", "ll", "\u2581s"]
    pieces += [f"\u2581x{i}" for i in range(max(0, n_extra - len(pieces)))]
    for i, p in enumerate(pieces):
        tokens.append(p)
        scores.append(-float(i) if len(p) == 1 else float(len(p)) - i * 0.01)
        types.append(1)
    return tokens, scores, types


def write_tiny_llama(
    path: Path,
    *,
    n_embd: int = 32,
    n_ff: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ctx_train: int = 256,
    seed: int = 0,
    arch: str = "llama",
    drop_keys: tuple[str, ...] = (),
    tensor_type_overrides: dict[str, int] | None = None,
    tied: bool = False,
    pad_vocab: int = 0,
) -> Path:
    """A random-weight llama model (F32 tensors unless overridden) with an SPM vocab."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = spm_vocab()
    n_vocab = len(tokens) + pad_vocab  # rows of token_embd/output; llama.vocab_size may exceed the token list
    head_dim = n_embd // n_head
    kvs = [
        KV("general.architecture", arch, VT.STRING),
        KV("general.name", "tiny-test", VT.STRING),
        KV(f"{arch}.context_length", n_ctx_train, VT.UINT32),
        KV(f"{arch}.embedding_length", n_embd, VT.UINT32),
        KV(f"{arch}.feed_forward_length", n_ff, VT.UINT32),
        KV(f"{arch}.block_count", n_layer, VT.UINT32),
        KV(f"{arch}.attention.head_count", n_head, VT.UINT32),
        KV(f"{arch}.attention.head_count_kv", n_head_kv, VT.UINT32),
        KV(f"{arch}.rope.dimension_count", head_dim, VT.UINT32),
        KV(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5, VT.FLOAT32),
        KV("tokenizer.ggml.model", "llama", VT.STRING),
        KV("tokenizer.ggml.tokens", tokens, VT.ARRAY, VT.STRING),
        KV("tokenizer.ggml.scores", scores, VT.ARRAY, VT.FLOAT32),
        KV("tokenizer.ggml.token_type", types, VT.ARRAY, VT.INT32),
        KV("tokenizer.ggml.bos_token_id", 1, VT.UINT32),
        KV("tokenizer.ggml.eos_token_id", 2, VT.UINT32),
        KV("tokenizer.ggml.unknown_token_id", 0, VT.UINT32),
    ]
    if pad_vocab:
        kvs.append(KV(f"{arch}.vocab_size", n_vocab, VT.UINT32))
    kvs = [kv for kv in kvs if kv.key not in drop_keys]

    shapes = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,)}
    if not tied:
        shapes["output.weight"] = (n_vocab, n_embd)
    for i in range(n_layer):
        p = f"blk.{i}."
        shapes.update({
            p + "attn_norm.weight": (n_embd,),
            p + "attn_q.weight": (n_head * head_dim, n_embd),
            p + "attn_k.weight": (n_head_kv * head_dim, n_embd),
            p + "attn_v.weight": (n_head_kv * head_dim, n_embd),
            p + "attn_output.weight": (n_embd, n_head * head_dim),
            p + "ffn_norm.weight": (n_embd,),
            p + "ffn_gate.weight": (n_ff, n_embd),
            p + "ffn_up.weight": (n_ff, n_embd),
            p + "ffn_down.weight": (n_embd, n_ff),
        })
    overrides = tensor_type_overrides or {}
    specs = []
    for name, shape in shapes.items():
        if len(shape) == 1:
            data = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            data = (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
        gtype = overrides.get(name, 0)
        if gtype == 1:
            data = data.astype(np.float16)
        elif gtype != 0:
            from gguf import GGMLQuantizationType
            from gguf.quants import quantize

            try:
                data = quantize(data, GGMLQuantizationType(gtype))
            except NotImplementedError:  # a type we only need to carry (e.g. to test refusal): zero blocks
                _, block, size = GGML_TYPES[gtype]
                data = np.zeros((shape[0], shape[1] // block * size), dtype=np.uint8)
        specs.append(TensorSpec(name, shape, gtype, (lambda d=data: d)))
    write_gguf(path, kvs, specs)
    return path
