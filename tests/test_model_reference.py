"""The forward pass against a plain numpy transcription of the llama equations, on tiny random models that
exercise what the golden files do not: rope.dimension_count < head size, linear rope scaling, rope_freqs factors,
explicit key/value lengths, GQA.

Tolerance: our KV cache holds f16-rounded keys/values (as llama.cpp's F16 cache), a relative error of ~5e-4 per
element, which moves these O(1) logits by ~1e-3; 1e-2 absolute leaves a margin without hiding a wrong rotation
(a wrong pair layout or frequency moves logits by O(0.1-1)).
"""

import numpy as np
import pytest
from gguf import GGUFValueType as VT

from llamacpy.gguf_file import GGUFFile
from llamacpy.gguf_writer import KV, TensorSpec, copy_kvs, write_gguf
from llamacpy.model import LlamaModel
from tiny_models import write_tiny_llama


def reference_forward(g: GGUFFile, tokens, n_rot, head_dim, n_head, n_head_kv, base, scale, factors, eps=1e-5):
    W = {n: np.asarray(g.tensor(n), dtype=np.float64) for n in g.tensors}
    n_layer = len({n.split(".")[1] for n in W if n.startswith("blk.")})
    x = W["token_embd.weight"][tokens]  # (n, n_embd)
    n = len(tokens)
    pos = np.arange(n)
    inv = base ** (-np.arange(0, n_rot, 2) / n_rot)  # (n_rot/2,)
    if factors is not None:
        inv = inv / factors
    theta = pos[:, None] * scale * inv[None, :]  # (n, n_rot/2)
    cos, sin = np.cos(theta), np.sin(theta)

    def rope(t):  # (n, heads, head_dim): rotate adjacent pairs of the first n_rot dims
        t = t.copy()
        a, b = t[..., 0:n_rot:2].copy(), t[..., 1:n_rot:2].copy()
        t[..., 0:n_rot:2] = a * cos[:, None] - b * sin[:, None]
        t[..., 1:n_rot:2] = a * sin[:, None] + b * cos[:, None]
        return t

    def norm(v, w):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * w

    for i in range(n_layer):
        p = f"blk.{i}."
        h = norm(x, W[p + "attn_norm.weight"])
        q = rope((h @ W[p + "attn_q.weight"].T).reshape(n, n_head, head_dim))
        k = rope((h @ W[p + "attn_k.weight"].T).reshape(n, n_head_kv, head_dim))
        v = (h @ W[p + "attn_v.weight"].T).reshape(n, n_head_kv, head_dim)
        rep = n_head // n_head_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim)
        att = att + np.triu(np.full((n, n), -np.inf), 1)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", att, v).reshape(n, -1)
        x = x + o @ W[p + "attn_output.weight"].T
        h = norm(x, W[p + "ffn_norm.weight"])
        gate, up = h @ W[p + "ffn_gate.weight"].T, h @ W[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ W[p + "ffn_down.weight"].T
    return norm(x, W["output_norm.weight"]) @ W["output.weight"].T


def with_extra(tmp_path, base_path, kvs_extra, drop=(), tensors_extra=()):
    src = GGUFFile(base_path)
    kvs = [kv for kv in copy_kvs(src) if kv.key not in drop] + list(kvs_extra)
    specs = [TensorSpec(n, t.shape, t.ggml_type, (lambda n=n: src.tensor(n))) for n, t in src.tensors.items()]
    out = tmp_path / "variant.gguf"
    write_gguf(out, kvs, list(tensors_extra) + specs)
    return out


@pytest.mark.parametrize("variant", ["plain", "partial_rope", "linear_scaling", "freq_factors", "key_length"])
def test_forward_matches_numpy_reference(tmp_path, variant):
    n_embd, n_head, n_head_kv = 64, 4, 2
    head_dim, n_rot, base, scale, factors = 16, 16, 10000.0, 1.0, None
    extra, drop, tensors = [], [], []
    if variant == "key_length":  # head size 32 != n_embd / n_head
        head_dim = n_rot = 32
    base_path = write_tiny_llama(tmp_path / "base.gguf", n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                                 n_layer=2, seed=3) if variant != "key_length" else None
    if variant == "key_length":
        base_path = _write_wide_heads(tmp_path, n_embd, n_head, n_head_kv, head_dim)
        extra = [KV("llama.attention.key_length", head_dim, VT.UINT32),
                 KV("llama.attention.value_length", head_dim, VT.UINT32)]
        drop = ["llama.rope.dimension_count"]
        extra.append(KV("llama.rope.dimension_count", head_dim, VT.UINT32))
    if variant == "partial_rope":
        n_rot = 8
        drop = ["llama.rope.dimension_count"]
        extra = [KV("llama.rope.dimension_count", n_rot, VT.UINT32)]
    if variant == "linear_scaling":
        scale, base = 0.25, 500000.0
        extra = [KV("llama.rope.scaling.type", "linear", VT.STRING), KV("llama.rope.scaling.factor", 4.0, VT.FLOAT32),
                 KV("llama.rope.freq_base", base, VT.FLOAT32)]
    if variant == "freq_factors":
        factors = np.array([1.0, 1.0, 2.0, 4.0, 8.0, 8.0, 16.0, 32.0], dtype=np.float32)
        tensors = [TensorSpec("rope_freqs.weight", (8,), 0, lambda: factors)]
    path = with_extra(tmp_path, base_path, extra, drop, tensors)
    tokens = np.array([1, 40, 77, 300, 5, 9, 260, 261, 262, 18, 100, 200])
    m = LlamaModel.load(path, n_ctx=64)
    ours = m.forward(tokens, all_logits=True)
    ref = reference_forward(GGUFFile(path), tokens, n_rot, head_dim, n_head, n_head_kv, base, scale, factors)
    assert np.abs(ours - ref).max() < 1e-2


def _write_wide_heads(tmp_path, n_embd, n_head, n_head_kv, head_dim):
    """A tiny model whose attention width n_head * head_dim (128) differs from n_embd (64)."""
    src = GGUFFile(write_tiny_llama(tmp_path / "narrow.gguf", n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv))
    rng = np.random.default_rng(5)
    shapes = {"attn_q": (n_head * head_dim, n_embd), "attn_k": (n_head_kv * head_dim, n_embd),
              "attn_v": (n_head_kv * head_dim, n_embd), "attn_output": (n_embd, n_head * head_dim)}
    specs = []
    for name, t in src.tensors.items():
        kind = name.split(".")[-2] if name.startswith("blk.") else None
        if kind in shapes:
            shape = shapes[kind]
            data = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
            specs.append(TensorSpec(name, shape, 0, lambda d=data: d))
        else:
            specs.append(TensorSpec(name, t.shape, t.ggml_type, (lambda n=name: src.tensor(n))))
    out = tmp_path / "wide.gguf"
    write_gguf(out, copy_kvs(src), specs)
    return out
