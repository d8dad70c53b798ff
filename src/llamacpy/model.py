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
from .kernels.batch import apply as apply_calls, plan_calls, rows_independent
from .kernels.linear import DECODE_MAX

# A prompt chunk's attention is computed in blocks of this many rows (each block over the cells up to its end,
# as a chunk of those rows alone). With matrices that compute prompt rows independently of the call
# (`prompt_split_exact`), a prompt cut into chunks at any multiples of PROMPT_BLOCK gives the same bits: the
# server's engine takes small chunks beside other requests and large ones alone, exactly.
PROMPT_BLOCK = 64


class KVCache:
    """Keys and values of n_seq sequences of up to n_ctx cells each, as f16 bits (llama.cpp's default F16 cache),
    paged: per layer a pool k_pool[il] (n_blocks, n_head_kv, KV_BLOCK, head_dim_k) uint16 (v_pool likewise) and
    `table` (n_seq, max_blocks) int32, the blocks of each sequence in cell order (kernels/ops.py). Blocks are
    taken as a sequence grows and given back when it is truncated or cleared; the pools grow (layer by layer, so
    the copy never holds two whole caches) when no free block is left, and never past n_seq * n_ctx cells.
    `n_used[seq]` cells are filled."""

    GROW_MIN_BLOCKS = 8

    def __init__(self, cfg: LlamaConfig, n_ctx: int, n_seq: int = 1):
        self.cfg = cfg
        self.n_ctx = int(n_ctx)
        self.n_seq = int(n_seq)
        self.max_blocks = -(-self.n_ctx // ops.KV_BLOCK)
        self.table = np.full((self.n_seq, self.max_blocks), -1, dtype=np.int32)  # (n_seq, max_blocks)
        self.n_blocks = [0] * self.n_seq  # blocks held per sequence
        self.n_used = [0] * self.n_seq
        self.k_pool = [self._alloc(0, cfg.head_dim_k) for _ in range(cfg.n_layer)]
        self.v_pool = [self._alloc(0, cfg.head_dim_v) for _ in range(cfg.n_layer)]
        self.free: list[int] = []

    def _alloc(self, n_blocks: int, d: int) -> np.ndarray:
        return np.zeros((n_blocks, self.cfg.n_head_kv, ops.KV_BLOCK, d), dtype=np.uint16)

    @property
    def capacity_blocks(self) -> int:
        return self.k_pool[0].shape[0] if self.k_pool else 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k_pool) + sum(a.nbytes for a in self.v_pool)

    def reserve(self, seq_id: int, n_cells: int) -> None:
        """Make sure cells 0..n_cells-1 of a sequence have blocks."""
        if n_cells > self.n_ctx:
            raise ContextError(f"{n_cells} tokens do not fit the context window of {self.n_ctx}")
        need = -(-n_cells // ops.KV_BLOCK)
        have = self.n_blocks[seq_id]
        if need <= have:
            return
        if len(self.free) < need - have:
            self._grow(need - have - len(self.free))
        for i in range(have, need):
            self.table[seq_id, i] = self.free.pop()
        self.n_blocks[seq_id] = need

    def _grow(self, n_more: int) -> None:
        cap = self.capacity_blocks
        limit = self.n_seq * self.max_blocks
        new_cap = min(limit, max(cap + n_more, cap + max(cap // 2, self.GROW_MIN_BLOCKS)))
        for pools, d in ((self.k_pool, self.cfg.head_dim_k), (self.v_pool, self.cfg.head_dim_v)):
            for il in range(len(pools)):
                a = self._alloc(new_cap, d)
                a[:cap] = pools[il]
                pools[il] = a  # the old layer's pool is freed here, before the next layer is copied
        self.free.extend(range(new_cap - 1, cap - 1, -1))  # pop() hands out the lowest block first

    def _release(self, seq_id: int) -> None:
        """Give back the blocks past the cells in use."""
        keep = -(-self.n_used[seq_id] // ops.KV_BLOCK)
        for i in range(self.n_blocks[seq_id] - 1, keep - 1, -1):
            self.free.append(int(self.table[seq_id, i]))
            self.table[seq_id, i] = -1
        self.n_blocks[seq_id] = min(self.n_blocks[seq_id], keep)

    def clear(self, seq_id: int | None = None) -> None:
        for s in range(self.n_seq) if seq_id is None else [seq_id]:
            self.n_used[s] = 0
            self._release(s)

    def truncate(self, seq_id: int, n: int) -> None:
        """Keep only the first n cells (positions 0..n-1) of a sequence."""
        self.n_used[seq_id] = min(self.n_used[seq_id], max(0, n))
        self._release(seq_id)

    def gather(self, il: int, seq_id: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first n cells of a sequence in layer il as f32: k (n_head_kv, n, dk), v (n_head_kv, n, dv)."""
        cfg = self.cfg
        k = np.empty((cfg.n_head_kv, n, cfg.head_dim_k), np.float32)
        v = np.empty((cfg.n_head_kv, n, cfg.head_dim_v), np.float32)
        ops.gather_kv(self.k_pool[il], self.table[seq_id], n, k)
        ops.gather_kv(self.v_pool[il], self.table[seq_id], n, v)
        return k, v

    def _dense(self, which: int) -> np.ndarray:
        """(n_layer, n_seq, n_head_kv, max n_used, d) f32 copy of the cells in use (for inspection and tests)."""
        n = max(self.n_used) if self.n_used else 0
        cfg = self.cfg
        d = cfg.head_dim_k if which == 0 else cfg.head_dim_v
        out = np.zeros((cfg.n_layer, self.n_seq, cfg.n_head_kv, n, d), np.float32)
        for il in range(cfg.n_layer):
            for s in range(self.n_seq):
                if self.n_used[s]:
                    out[il, s, :, :self.n_used[s]] = self.gather(il, s, self.n_used[s])[which]
        return out

    @property
    def k(self) -> np.ndarray:
        """A copy: keys of the cells in use, (n_layer, n_seq, n_head_kv, max n_used, dk) f32."""
        return self._dense(0)

    @property
    def v(self) -> np.ndarray:
        return self._dense(1)


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
        self._rows_independent: dict[int, bool] = {}  # id(Linear) -> kernels/batch.rows_independent
        self.n_params = sum(t.n_elements for t in gguf.tensors.values())
        # bytes of weights a decode step reads: every matrix except the embedding table (only rows are read)
        out_name = "output.weight" if "output.weight" in gguf.tensors else "token_embd.weight"
        self.weight_bytes_per_token = gguf.tensors[out_name].nbytes + sum(
            t.nbytes for name, t in gguf.tensors.items() if name.startswith("blk.") and len(t.shape) == 2)

    def reset_cache(self, n_seq: int, n_ctx: int | None = None) -> None:
        """A new, empty KV cache for n_seq sequences of up to n_ctx cells each (default: the model's n_ctx)."""
        n_ctx = self.n_ctx if n_ctx is None else int(n_ctx)
        if not 0 < n_ctx <= self.n_ctx:
            raise ContextError(f"a sequence's context of {n_ctx} must be in [1, {self.n_ctx}]")
        self.kv = KVCache(self.cfg, n_ctx, int(n_seq))

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

    def prompt_split_exact(self) -> bool:
        """Whether every layer matrix computes a prompt row independently of how many rows its call has (the
        decode kernels DECODE_MAX rows a call: kernels/linear.py prompt_by_decode), so that a prompt cut at
        other multiples of PROMPT_BLOCK computes the same bits. False for the f32-tile + sgemm prompt path."""
        def by_rows(lin) -> bool:
            parts = getattr(lin, "parts", None)  # a fused matrix: its packed decode kernels or each part
            if parts is not None:
                return all(by_rows(p) for p in parts)
            return bool(getattr(lin, "prompt_by_decode", False))

        return all(by_rows(m) for L in self.layers for m in (L.wqkv, L.wo, L.w_gate_up, L.w_down))

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, tokens, positions=None, seq_id: int = 0, all_logits: bool = False) -> np.ndarray:
        """Evaluate a batch of tokens of one sequence, appended at its next cache cells.
        tokens: (n,) int; positions: (n,) int, must continue the sequence (default: n_used..n_used+n-1).
        Returns logits (n, n_vocab) if all_logits else (1, n_vocab) for the last token."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = tokens.shape[0]
        if n == 0:
            raise ValueError("forward: empty batch")
        start = self.kv.n_used[seq_id]
        if positions is None:
            positions = np.arange(start, start + n)
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if positions.shape[0] != n:
            raise ValueError("forward: tokens and positions must have the same length")
        if tokens.min() < 0 or tokens.max() >= self.cfg.n_vocab:
            bad = int(tokens[(tokens < 0) | (tokens >= self.cfg.n_vocab)][0])
            raise ValueError(f"token id {bad} out of range [0, {self.cfg.n_vocab})")
        return self._forward(tokens, positions, np.full(n, seq_id, dtype=np.int64), [(int(seq_id), 0, n)],
                             "all" if all_logits else "last")

    def forward_batch(self, tokens, positions, seq_ids, logits="last") -> np.ndarray:
        """Evaluate a batch of (token, position, sequence) rows: several sequences in one pass, the weights read
        once per call for all rows that share a kernel path (kernels/batch.py). Each sequence's rows must be
        contiguous in the batch and continue it (positions n_used..n_used+k-1). Every row is computed as
        `forward` of its sequence's rows alone would compute it: attention only over its own sequence's cells up
        to its position, and the same matmul path as alone (bit-identical results whatever the batch holds).

        logits: "last" -> (n_seq_in_batch, n_vocab), the last row of each sequence, in order of appearance;
        "all" -> (n, n_vocab); "none" -> None; "hidden" -> (n, n_embd) the final normed hidden states
        (llama.cpp's embeddings)."""
        cfg = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        seq_ids = np.asarray(seq_ids, dtype=np.int64).reshape(-1)
        n = tokens.shape[0]
        if n == 0:
            raise ValueError("forward: empty batch")
        if positions.shape[0] != n or seq_ids.shape[0] != n:
            raise ValueError("forward_batch: tokens, positions and seq_ids must have the same length")
        if tokens.min() < 0 or tokens.max() >= cfg.n_vocab:
            bad = int(tokens[(tokens < 0) | (tokens >= cfg.n_vocab)][0])
            raise ValueError(f"token id {bad} out of range [0, {cfg.n_vocab})")
        return self._forward(tokens, positions, seq_ids, _groups(seq_ids), logits)

    def _forward(self, tokens, positions, seq_ids, groups, logits):
        """forward_batch with the (seq, start, end) row groups already found (in order of appearance)."""
        cfg = self.cfg
        kv = self.kv
        n = tokens.shape[0]
        for s, a, b in groups:
            if not 0 <= s < kv.n_seq:
                raise ValueError(f"sequence id {s} out of range [0, {kv.n_seq})")
            start = kv.n_used[s]
            if positions[a] != start or (b - a > 1 and np.any(np.diff(positions[a:b]) != 1)):
                raise ContextError(f"positions must continue sequence {s} at {start}")
            if start + (b - a) > kv.n_ctx:
                raise ContextError(f"{start + b - a} tokens do not fit the context window of {kv.n_ctx}")
        # small groups first (their rows share the decode kernels), then the large ones; rows permuted to match
        order = sorted(range(len(groups)), key=lambda i: (groups[i][2] - groups[i][1] > DECODE_MAX, i))
        perm = (np.arange(n) if order == list(range(len(groups)))
                else np.concatenate([np.arange(groups[i][1], groups[i][2]) for i in order]))
        pgroups, r = [], 0
        for i in order:
            s, a, b = groups[i]
            pgroups.append((s, r, r + b - a))
            r += b - a
        spans = [(a, b) for _, a, b in pgroups]
        calls = {True: plan_calls(True, spans), False: plan_calls(False, spans)}
        rows = positions[perm]  # rope table rows = cache cells
        seqs_p = seq_ids[perm]
        n_small = sum(b - a for _, a, b in pgroups if b - a <= DECODE_MAX)
        for s, a, b in pgroups:
            kv.reserve(s, kv.n_used[s] + b - a)
        x = self.tok_embd.get_rows(tokens[perm])  # (n, n_embd)
        h = np.empty_like(x)
        attn = np.empty((n, cfg.n_head * cfg.head_dim_v), dtype=np.float32)
        act = np.empty((n, cfg.n_ff), dtype=np.float32)
        scale = np.float32(1.0 / np.sqrt(cfg.head_dim_k))

        indep = self._rows_independent

        def mm(lin, inp):
            key = id(lin)
            if key not in indep:
                indep[key] = rows_independent(lin)
            return apply_calls(lin, inp, calls[indep[key]])

        for il, L in enumerate(self.layers):
            ops.rms_norm(x, L.attn_norm, cfg.rms_eps, h)
            q, k, v = L.wqkv.split(mm(L.wqkv, h))  # (n, n_head * dk), (n, n_head_kv * dk), (n, n_head_kv * dv)
            ops.rope_inplace(q, cfg.n_head, cfg.head_dim_k, cfg.n_rot, self.rope_cos, self.rope_sin, rows)
            ops.rope_inplace(k, cfg.n_head_kv, cfg.head_dim_k, cfg.n_rot, self.rope_cos, self.rope_sin, rows)
            k_pool, v_pool = kv.k_pool[il], kv.v_pool[il]
            ops.store_kv_paged(k, v, k_pool, v_pool, kv.table, seqs_p, rows)
            if n_small:  # every row of the small groups in one call, each over its own sequence's cells
                ops.attention_paged(q[:n_small], k_pool, v_pool, kv.table, seqs_p, rows, cfg.n_head, scale,
                                    attn[:n_small])
            for s, a, b in pgroups:
                if b - a > DECODE_MAX:  # a prompt chunk: as `forward` of it alone (BLAS from ATTN_BLAS_MIN_TOKENS)
                    start = kv.n_used[s]
                    kf, vf = kv.gather(il, s, start + b - a)
                    # in blocks of PROMPT_BLOCK rows, each as the chunk of those rows alone would compute it
                    for c in range(a, b, PROMPT_BLOCK):
                        e = min(b, c + PROMPT_BLOCK)
                        if e - c <= DECODE_MAX:  # a short tail: as a small group (attention_paged is per row)
                            ops.attention_paged(q[c:e], k_pool, v_pool, kv.table, seqs_p[c:e], rows[c:e],
                                                cfg.n_head, scale, attn[c:e])
                        else:
                            ops.attention(q[c:e], kf, vf, start + c - a, cfg.n_head, scale, attn[c:e])
            ops.add_inplace(x, mm(L.wo, attn))
            ops.rms_norm(x, L.ffn_norm, cfg.rms_eps, h)
            gu = mm(L.w_gate_up, h)  # (n, 2 n_ff): [gate | up]
            if gu.flags.c_contiguous:  # as the matmuls return it: no copies of the halves
                ops.swiglu_fused(gu, act)
            else:
                gate, up = L.w_gate_up.split(gu)  # (n, n_ff) each
                ops.swiglu(gate, up, act)
            ops.add_inplace(x, mm(L.w_down, act))
        for s, a, b in pgroups:
            kv.n_used[s] += b - a
        if logits == "none":
            return None
        inv = np.empty(n, np.int64)
        inv[perm] = np.arange(n)
        if logits == "hidden" or logits == "all":
            out = np.empty_like(x)
            ops.rms_norm(x, self.output_norm, cfg.rms_eps, out)
            if logits == "hidden":
                return out[inv]
            # the same call split as one sequence's forward(all_logits=True) makes (rows of a group together)
            return apply_calls(self.output, out, plan_calls(rows_independent(self.output), spans))[inv]
        if logits != "last":
            raise ValueError(f"forward_batch: logits must be 'last', 'all', 'none' or 'hidden', not {logits!r}")
        last = np.array([inv[b - 1] for _, a, b in groups])  # permuted row of each group's last token, by appearance
        out = np.empty((len(groups), cfg.n_embd), np.float32)
        ops.rms_norm(np.ascontiguousarray(x[last]), self.output_norm, cfg.rms_eps, out)
        # alone, the last row's logits come from a one-row call: keep one-row calls unless rows are independent
        one = [(i, i + 1) for i in range(len(groups))]
        return apply_calls(self.output, out, plan_calls(rows_independent(self.output), one))

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
            ops.shift_kv_paged(kv.k_pool[il], kv.v_pool[il], kv.table[seq_id], n_keep, n_discard, n_used, cos, sin,
                               cfg.n_rot)
        kv.truncate(seq_id, n_used - n_discard)

    @property
    def n_vocab(self) -> int:
        return self.cfg.n_vocab

    def describe(self) -> str:
        types = {}
        for t in self.gguf.tensors.values():
            types[t.type_name] = types.get(t.type_name, 0) + 1
        return ", ".join(f"{k}: {v}" for k, v in sorted(types.items()))


def _groups(seq_ids: np.ndarray) -> list[tuple[int, int, int]]:
    """(seq, start, end) runs of equal sequence ids; a sequence may appear in one run only."""
    cuts = np.flatnonzero(np.diff(seq_ids)) + 1
    bounds = [0, *cuts.tolist(), seq_ids.shape[0]]
    out = [(int(seq_ids[a]), a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    if len({s for s, _, _ in out}) != len(out):
        raise ValueError("forward_batch: the rows of a sequence must be contiguous in the batch")
    return out


def _replace(cfg: LlamaConfig, **kw) -> LlamaConfig:
    from dataclasses import replace

    return replace(cfg, **kw)
