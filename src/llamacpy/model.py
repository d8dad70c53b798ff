"""The llama forward pass: weights from a GGUF file, a KV cache, and `forward` over a batch of tokens.

Owns: `LlamaModel` (loading/validating the weights named by llama.cpp's tensor names, the per-layer
computation, logits) and `KVCache` (per-sequence cells with removal and position shift).
Must not: tokenize, sample, or print (tokenizer/, sampling.py, generation.py do that).

Cache invariant: the cell index of a sequence *is* its position. Context shift removes cells and moves the
later cells down, re-rotating their keys, exactly as llama.cpp's K-shift does to the positions it keeps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .config import LlamaConfig
from .cpu import physical_cores
from .errors import ContextError, ModelError
from .gguf_file import GGUFFile, ggml_type_name
from .kernels import fuse_linears, make_linear, set_num_threads
from .kernels import ops


class KVCache:
    """Keys and values per layer and sequence: k[layer][seq] (n_head_kv, n_ctx, head_dim_k) float32 holding
    f16-rounded values (llama.cpp's default F16 cache precision). `n_used[seq]` cells are filled."""

    def __init__(self, cfg: LlamaConfig, n_ctx: int, n_seq: int = 1):
        self.n_ctx = n_ctx
        self.n_seq = n_seq
        shape_k = (cfg.n_layer, n_seq, cfg.n_head_kv, n_ctx, cfg.head_dim_k)
        shape_v = (cfg.n_layer, n_seq, cfg.n_head_kv, n_ctx, cfg.head_dim_v)
        self.k = np.zeros(shape_k, dtype=np.float32)
        self.v = np.zeros(shape_v, dtype=np.float32)
        self.n_used = [0] * n_seq

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def clear(self, seq_id: int | None = None) -> None:
        for s in range(self.n_seq) if seq_id is None else [seq_id]:
            self.n_used[s] = 0

    def truncate(self, seq_id: int, n: int) -> None:
        """Keep only the first n cells (positions 0..n-1) of a sequence."""
        self.n_used[seq_id] = min(self.n_used[seq_id], max(0, n))


@dataclass
class LayerWeights:
    attn_norm: np.ndarray  # (n_embd,)
    wq: object  # Linear (n_head * head_dim_k, n_embd)
    wk: object  # Linear (n_head_kv * head_dim_k, n_embd)
    wv: object  # Linear (n_head_kv * head_dim_v, n_embd)
    wo: object  # Linear (n_embd, n_head * head_dim_v)
    ffn_norm: np.ndarray  # (n_embd,)
    w_gate: object  # Linear (n_ff, n_embd)
    w_up: object  # Linear (n_ff, n_embd)
    w_down: object  # Linear (n_embd, n_ff)
    wqkv: object = None  # FusedLinear [wq | wk | wv]: one decode kernel call for the three
    w_gate_up: object = None  # FusedLinear [w_gate | w_up]

    def __post_init__(self):
        self.wqkv = fuse_linears([self.wq, self.wk, self.wv])
        self.w_gate_up = fuse_linears([self.w_gate, self.w_up])


class LlamaModel:
    def __init__(self, gguf: GGUFFile, n_ctx: int = 512, n_threads: int | None = None, n_seq: int = 1):
        self.gguf = gguf
        self.path = gguf.path
        self.file_size = gguf.size
        cfg = LlamaConfig.from_metadata(gguf.metadata, gguf.path)
        if n_ctx <= 0:
            n_ctx = cfg.n_ctx_train
        self.n_ctx = int(n_ctx)
        self.n_threads = n_threads or physical_cores()
        set_num_threads(self.n_threads)

        self.tok_embd = self._linear("token_embd.weight", (None, cfg.n_embd))
        n_vocab = self.tok_embd.n_out
        if cfg.n_vocab != n_vocab:
            cfg = _replace(cfg, n_vocab=n_vocab)
        self.cfg = cfg
        self.output_norm = self._vector("output_norm.weight", cfg.n_embd)
        if "output.weight" in gguf.tensors:
            self.output = self._linear("output.weight", (n_vocab, cfg.n_embd))
        else:  # tied embeddings
            self.output = self.tok_embd
        dq, dk_all, dv_all = cfg.n_head * cfg.head_dim_k, cfg.n_head_kv * cfg.head_dim_k, cfg.n_head_kv * cfg.head_dim_v
        self.layers = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            self.layers.append(
                LayerWeights(
                    attn_norm=self._vector(p + "attn_norm.weight", cfg.n_embd),
                    wq=self._linear(p + "attn_q.weight", (dq, cfg.n_embd)),
                    wk=self._linear(p + "attn_k.weight", (dk_all, cfg.n_embd)),
                    wv=self._linear(p + "attn_v.weight", (dv_all, cfg.n_embd)),
                    wo=self._linear(p + "attn_output.weight", (cfg.n_embd, cfg.n_head * cfg.head_dim_v)),
                    ffn_norm=self._vector(p + "ffn_norm.weight", cfg.n_embd),
                    w_gate=self._linear(p + "ffn_gate.weight", (cfg.n_ff, cfg.n_embd)),
                    w_up=self._linear(p + "ffn_up.weight", (cfg.n_ff, cfg.n_embd)),
                    w_down=self._linear(p + "ffn_down.weight", (cfg.n_embd, cfg.n_ff)),
                )
            )
        freq_factors = None
        if "rope_freqs.weight" in gguf.tensors:
            freq_factors = self._vector("rope_freqs.weight", cfg.n_rot // 2)
        self.freq_factors = freq_factors
        self.rope_cos, self.rope_sin = ops.rope_angles(
            np.arange(self.n_ctx), cfg.n_rot, cfg.rope_freq_base, cfg.rope_freq_scale, freq_factors
        )  # (n_ctx, n_rot/2)
        self.kv = KVCache(cfg, self.n_ctx, n_seq)
        self.n_params = sum(t.n_elements for t in gguf.tensors.values())
        # bytes of weights a decode step reads: every matrix except the embedding table (only rows are read)
        out_name = "output.weight" if "output.weight" in gguf.tensors else "token_embd.weight"
        self.weight_bytes_per_token = gguf.tensors[out_name].nbytes + sum(
            t.nbytes for name, t in gguf.tensors.items() if name.startswith("blk.") and len(t.shape) == 2)

    @classmethod
    def load(cls, path: str | os.PathLike, n_ctx: int = 512, n_threads: int | None = None, n_seq: int = 1):
        return cls(GGUFFile(path), n_ctx=n_ctx, n_threads=n_threads, n_seq=n_seq)

    # -- loading helpers ---------------------------------------------------------------------------
    def _info(self, name: str):
        info = self.gguf.tensors.get(name)
        if info is None:
            raise ModelError(f"{self.path}: missing tensor {name!r}")
        return info

    def _vector(self, name: str, n: int) -> np.ndarray:
        info = self._info(name)
        if info.shape != (n,):
            raise ModelError(f"{self.path}: tensor {name!r} has shape {info.shape}, expected ({n},)")
        if info.ggml_type == 0:
            return np.ascontiguousarray(self.gguf.tensor(name), dtype=np.float32)
        if info.ggml_type == 1:
            return self.gguf.tensor(name).astype(np.float32)
        raise ModelError(f"{self.path}: tensor {name!r} has type {info.type_name}; norms must be F32 or F16")

    def _linear(self, name: str, shape: tuple):
        info = self._info(name)
        if len(info.shape) != 2 or any(e is not None and e != a for e, a in zip(shape, info.shape)):
            want = tuple("n" if e is None else e for e in shape)
            raise ModelError(f"{self.path}: tensor {name!r} has shape {info.shape}, expected {want}")
        try:
            return make_linear(info.ggml_type, self.gguf.tensor(name), info.shape, name)
        except ModelError as e:
            raise ModelError(f"{self.path}: {e}") from None

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, tokens, positions=None, seq_id: int = 0, all_logits: bool = False) -> np.ndarray:
        """Evaluate a batch of tokens of one sequence, appended at its next cache cells.
        tokens: (n,) int; positions: (n,) int, must continue the sequence (default: n_used..n_used+n-1).
        Returns logits (n, n_vocab) if all_logits else (1, n_vocab) for the last token."""
        cfg = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = tokens.shape[0]
        start = self.kv.n_used[seq_id]
        if n == 0:
            raise ValueError("forward: empty batch")
        if positions is not None:
            positions = np.asarray(positions).reshape(-1)
            if positions.shape[0] != n or positions[0] != start or np.any(np.diff(positions) != 1):
                raise ContextError(f"positions must continue sequence {seq_id} at {start}")
        if start + n > self.n_ctx:
            raise ContextError(f"{start + n} tokens do not fit the context window of {self.n_ctx}")
        if tokens.min() < 0 or tokens.max() >= cfg.n_vocab:
            bad = int(tokens[(tokens < 0) | (tokens >= cfg.n_vocab)][0])
            raise ValueError(f"token id {bad} out of range [0, {cfg.n_vocab})")
        rows = np.arange(start, start + n, dtype=np.int64)
        x = self.tok_embd.get_rows(tokens)  # (n, n_embd)
        h = np.empty_like(x)
        attn = np.empty((n, cfg.n_head * cfg.head_dim_v), dtype=np.float32)
        act = np.empty((n, cfg.n_ff), dtype=np.float32)
        scale = np.float32(1.0 / np.sqrt(cfg.head_dim_k))
        kv = self.kv
        for il, L in enumerate(self.layers):
            ops.rms_norm(x, L.attn_norm, cfg.rms_eps, h)
            q, k, v = L.wqkv.split(L.wqkv(h))  # (n, n_head * dk), (n, n_head_kv * dk), (n, n_head_kv * dv)
            ops.rope_inplace(q, cfg.n_head, cfg.head_dim_k, cfg.n_rot, self.rope_cos, self.rope_sin, rows)
            ops.rope_inplace(k, cfg.n_head_kv, cfg.head_dim_k, cfg.n_rot, self.rope_cos, self.rope_sin, rows)
            k_cache, v_cache = kv.k[il, seq_id], kv.v[il, seq_id]
            ops.store_kv(k, v, k_cache, v_cache, start)
            ops.attention(q, k_cache, v_cache, start, cfg.n_head, scale, attn)
            ops.add_inplace(x, L.wo(attn))
            ops.rms_norm(x, L.ffn_norm, cfg.rms_eps, h)
            gate, up = L.w_gate_up.split(L.w_gate_up(h))  # (n, n_ff) each
            ops.swiglu(gate, up, act)
            ops.add_inplace(x, L.w_down(act))
        kv.n_used[seq_id] = start + n
        last = x if all_logits else x[-1:]
        out = np.empty_like(last)
        ops.rms_norm(last, self.output_norm, cfg.rms_eps, out)
        return self.output(out)  # (n or 1, n_vocab)

    def shift_context(self, seq_id: int, n_keep: int, n_discard: int) -> None:
        """Drop cells n_keep..n_keep+n_discard-1 of a sequence; later cells move down by n_discard and their
        keys are re-rotated by -n_discard positions (llama.cpp's context shift)."""
        kv = self.kv
        n_used = kv.n_used[seq_id]
        if n_discard <= 0:
            return
        if n_keep < 0 or n_keep + n_discard > n_used:
            raise ContextError(f"cannot discard {n_discard} cells after {n_keep} of {n_used}")
        cfg = self.cfg
        cos, sin = ops.rope_angles(np.array([-n_discard]), cfg.n_rot, cfg.rope_freq_base, cfg.rope_freq_scale,
                                   self.freq_factors)
        for il in range(cfg.n_layer):
            ops.shift_kv(kv.k[il, seq_id], kv.v[il, seq_id], n_keep, n_discard, n_used, cos, sin, cfg.n_rot)
        kv.n_used[seq_id] = n_used - n_discard

    @property
    def n_vocab(self) -> int:
        return self.cfg.n_vocab

    def describe(self) -> str:
        types = {}
        for t in self.gguf.tensors.values():
            types[t.type_name] = types.get(t.type_name, 0) + 1
        return ", ".join(f"{k}: {v}" for k, v in sorted(types.items()))


def _replace(cfg: LlamaConfig, **kw) -> LlamaConfig:
    from dataclasses import replace

    return replace(cfg, **kw)
