"""Per-layer element-wise and attention kernels (numba): RMSNorm, RoPE, causal attention over the KV cache,
SwiGLU, residual adds.

The KV cache (model.KVCache) is paged f16: per layer a pool of blocks (n_blocks, n_head_kv, KV_BLOCK, d) uint16
holding float16 bits, and a table (n_seq, max_blocks) int32 of each sequence's blocks: cell c of sequence s is
row c % KV_BLOCK of block table[s, c // KV_BLOCK]. The kernels convert the bits in registers (vcvtph2ps /
vcvtps2ph), so the values are exactly the f16-rounded ones an f32 cache held before.

Owns: the non-matmul math of a llama block, each a single compiled call over a whole batch of tokens
(no Python loops over heads or tokens). Must not: know about tensors' file types or the model layout.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from numba.core import types as _types
from numba.extending import intrinsic as _intrinsic
from llvmlite import ir as _ir

from .common import f16_bits_to_f32, f32_round_f16
from .vexp import exp_f32, max_f32, silu_f32
from .workers import run_jobs

KV_BLOCK_SHIFT = 5
KV_BLOCK = 1 << KV_BLOCK_SHIFT  # cells per KV cache block

_JIT = dict(cache=True, nogil=True, fastmath=True)


@nb.njit(**_JIT)
def rms_norm(x, w, eps, out):
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w.   x, out: (n_tokens, n_embd); w: (n_embd,)"""
    n, d = x.shape
    for t in range(n):
        ss = 0.0
        for i in range(d):
            v = np.float64(x[t, i])
            ss += v * v
        scale = np.float32(1.0 / math.sqrt(ss / d + eps))
        for i in range(d):
            out[t, i] = x[t, i] * scale * w[i]


def _inv_freqs(n_rot: int, freq_base: float, freq_factors=None) -> np.ndarray:
    """base^(-2i/n_rot) / factor_i for i < n_rot/2, the power accumulated in float32 as ggml does."""
    half = n_rot // 2
    theta_scale = np.float32(freq_base) ** np.float32(-2.0 / n_rot)
    inv = np.empty(half, dtype=np.float32)
    acc = np.float32(1.0)
    for i in range(half):  # ggml multiplies theta by theta_scale once per pair, in float32
        inv[i] = acc
        acc = np.float32(acc * theta_scale)
    if freq_factors is not None:
        inv = (inv / np.asarray(freq_factors, dtype=np.float32)[:half]).astype(np.float32)
    return inv


def rope_angles(positions, n_rot: int, freq_base: float, freq_scale: float, freq_factors=None):
    """cos/sin tables (len(positions), n_rot/2) float32 for the llama (adjacent-pair) rope:
    theta_i(p) = p * freq_scale * base^(-2i/n_rot) / factor_i. Positions may be negative (context shift)."""
    inv = _inv_freqs(n_rot, freq_base, freq_factors)
    theta = (np.asarray(positions, dtype=np.float32)[:, None] * np.float32(freq_scale)) * inv[None, :]
    return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


@nb.njit(**_JIT)
def rope_inplace(x, n_head, head_dim, n_rot, cos, sin, rows):
    """Rotate adjacent pairs (x[2i], x[2i+1]) of the first n_rot dims of every head, in place.
    x: (n_tokens, n_head * head_dim); cos/sin: (n_table, n_rot/2); rows[t]: table row of token t."""
    n = x.shape[0]
    half = n_rot // 2
    for t in range(n):
        r = rows[t]
        for h in range(n_head):
            base = h * head_dim
            for i in range(half):
                c = cos[r, i]
                s = sin[r, i]
                a = x[t, base + 2 * i]
                b = x[t, base + 2 * i + 1]
                x[t, base + 2 * i] = a * c - b * s
                x[t, base + 2 * i + 1] = a * s + b * c


# Batches of at least this many query tokens take the BLAS attention (two sgemm per KV head) instead of the
# per-(token, head) numba loops: measured on pp512 of a 1.1B model, 2.35 s -> see attention_blas.
ATTN_BLAS_MIN_TOKENS = 16


def attention(q, k_cache, v_cache, start, n_head, scale, out):
    """Causal multi-head attention with grouped-query KV heads (see attention_loops for the shapes).
    Prompt batches go through attention_blas, single tokens and small batches through attention_loops;
    both round q and the probabilities to f16 as llama.cpp's F16-cache KQ/KQV products do."""
    if q.shape[0] >= ATTN_BLAS_MIN_TOKENS:
        attention_blas(q, k_cache, v_cache, start, n_head, scale, out)
    elif q.shape[1] <= ATTN_SERIAL_MAX_WIDTH:
        _attention_loops_serial(q, k_cache, v_cache, start, n_head, scale, out)
    else:
        attention_loops(q, k_cache, v_cache, start, n_head, scale, out)


def attention_blas(q, k_cache, v_cache, start, n_head, scale, out, q_chunk: int = 256):
    """attention() for prompt batches: per KV head, S = f16(Q) K^T (sgemm), then scale, causal mask, softmax and
    f16 rounding of P in one numba pass, then O = P V (sgemm). Queries go in chunks of q_chunk tokens to bound
    the (group*chunk, n_kv) score buffer. Each (chunk, KV head) is one job on workers.run_jobs (sgemms on one
    BLAS thread, the serial softmax): the same calls whatever thread runs them, so the same bits."""
    from .linear import _blas

    n = q.shape[0]
    n_head_kv, _, dk = k_cache.shape
    dv = v_cache.shape[2]
    group = n_head // n_head_kv
    scale = np.float32(scale)
    n_chunks = -(-n // q_chunk)

    def job(i):
        c0 = (i // n_head_kv) * q_chunk
        kvh = i % n_head_kv
        c1 = min(n, c0 + q_chunk)
        m = c1 - c0
        n_kv = start + c1
        h0 = kvh * group
        qg = np.empty((group * m, dk), np.float32)
        _q_heads_f16(q, c0, m, h0, group, qg)  # (group*m, dk): f16-rounded, head-major
        s = np.empty((group * m, n_kv), np.float32)
        np.matmul(qg, k_cache[kvh, :n_kv].T, out=s)  # (group*m, n_kv)
        _softmax_causal_f16(s, m, start + c0, scale)
        og = np.empty((group * m, dv), np.float32)
        np.matmul(s, v_cache[kvh, :n_kv], out=og)  # (group*m, dv)
        _o_heads(og, c0, m, h0, group, out)

    _blas(1)
    run_jobs(job, n_chunks * n_head_kv, nb.get_num_threads())


@nb.njit(**_JIT)
def _q_heads_f16(q, c0, m, h0, group, qg):
    """qg[a*m + t] = f16(q[c0 + t, head h0 + a]) for a < group, t < m.  q: (n, n_head*dk); qg: (group*m, dk)"""
    dk = qg.shape[1]
    for a in range(group):
        for t in range(m):
            for i in range(dk):
                qg[a * m + t, i] = f32_round_f16(q[c0 + t, (h0 + a) * dk + i])


@nb.njit(**_JIT)
def _o_heads(og, c0, m, h0, group, out):
    """out[c0 + t, head h0 + a] = og[a*m + t]: the inverse of _q_heads_f16's layout.  og: (group*m, dv)"""
    dv = og.shape[1]
    for a in range(group):
        for t in range(m):
            for i in range(dv):
                out[c0 + t, (h0 + a) * dv + i] = og[a * m + t, i]


@nb.njit(**_JIT)
def _softmax_causal_f16(s, m, first, scale):
    """Row i of s holds scores of query token i % m (cell first + i % m): scale, mask keys after that cell,
    softmax, round to f16 (llama.cpp's KQV product takes P as f16); masked entries become 0.  s: (rows, n_kv)
    Serial: attention_blas runs it inside its per-KV-head jobs."""
    rows, n_kv = s.shape
    for i in range(rows):
        lim = min(n_kv, first + i % m + 1)
        _softmax_f16_row(s[i], lim, scale)


@nb.njit(**_JIT)
def _softmax_f16_row(x, lim, scale):
    """x[:lim] = f16(softmax(x[:lim] * scale)), x[lim:] = 0, in three vectorized passes: max, exp + sum (the
    scaling folded in), normalize + f16 rounding.  x: (n_kv,) contiguous; scale > 0"""
    mx = np.float32(-np.inf)
    for j in range(lim):
        mx = max_f32(mx, x[j])
    tot = _exp_sub_sum(x, lim, scale, mx * scale)  # max(x) * scale is max(x * scale): rounding is monotone
    inv = np.float32(1.0) / tot
    for j in range(lim):
        x[j] = f32_round_f16(x[j] * inv)
    for j in range(lim, x.shape[0]):
        x[j] = 0.0


@nb.njit(**_JIT)
def _exp_sub_sum(x, lim, scale, mx):
    """x[:lim] = exp(x[:lim] * scale - mx); returns their float32 sum. Every softmax's exp pass (one code for
    all; the kernels whose scores are already scaled pass scale = 1, an exact product)."""
    scale = np.float32(scale)
    mx = np.float32(mx)
    tot = np.float32(0.0)
    for j in range(lim):
        e = exp_f32(x[j] * scale - mx)
        x[j] = e
        tot += e
    return tot


@nb.njit(parallel=True, **_JIT)
def attention_loops(q, k_cache, v_cache, start, n_head, scale, out):
    """Causal multi-head attention with grouped-query KV heads.
    q: (n_tokens, n_head * dk) for tokens at cache cells start..start+n-1 (already written to the cache);
    k_cache: (n_head_kv, n_ctx, dk); v_cache: (n_head_kv, n_ctx, dv); out: (n_tokens, n_head * dv)."""
    n = q.shape[0]
    n_head_kv, _, dk = k_cache.shape
    dv = v_cache.shape[2]
    group = n_head // n_head_kv
    for job in nb.prange(n * n_head):
        t = job // n_head
        h = job % n_head
        kvh = h // group
        n_kv = start + t + 1
        scores = np.empty(n_kv, dtype=np.float32)
        qoff = h * dk
        # llama.cpp's KQ product takes the F16 cache's vec_dot type: q is rounded to f16 first
        qh = np.empty(dk, dtype=np.float32)
        for i in range(dk):
            qh[i] = f32_round_f16(q[t, qoff + i])
        mx = -np.inf
        for j in range(n_kv):
            s = np.float32(0.0)
            for i in range(dk):
                s += qh[i] * k_cache[kvh, j, i]
            s *= scale
            scores[j] = s
            if s > mx:
                mx = s
        inv = np.float32(1.0) / _exp_sub_sum(scores, n_kv, 1.0, mx)
        ooff = h * dv
        for i in range(dv):
            out[t, ooff + i] = 0.0
        for j in range(n_kv):
            p = f32_round_f16(scores[j] * inv)  # the KQV product rounds the probabilities to f16 likewise
            for i in range(dv):
                out[t, ooff + i] += p * v_cache[kvh, j, i]


# Models whose attention is this narrow (n_head * head_dim, e.g. stories260K's 64) run attention_loops without
# threads: their work per call is below the threads' start-up cost, and the serial compile takes ~40% of the
# parallel one (a cold stories260K run: 3.6 s -> 1.5 s for this kernel). The width is fixed per model, so a
# model only ever compiles one of the two. The twin has its own name because numba's cache index is keyed by
# the function's qualified name and bytecode, not by `parallel`: under the same name they would share entries.
ATTN_SERIAL_MAX_WIDTH = 256


def _serial_twin(disp, name: str):
    import types

    f = disp.py_func
    g = types.FunctionType(f.__code__, f.__globals__, name, f.__defaults__, f.__closure__)
    g.__qualname__, g.__doc__ = name, f.__doc__
    return nb.njit(**_JIT)(g)


_attention_loops_serial = _serial_twin(attention_loops, "_attention_loops_serial")


def swiglu(g, u, out):
    """out = silu(g) * u.  all (n_tokens, n_ff). Prompt batches (from SWIGLU_MT_VALUES values) in row ranges on
    workers.run_jobs; each value is computed alone, so the split does not change a bit."""
    n, d = g.shape
    if n == 0:
        return
    nt = nb.get_num_threads() if n * d >= SWIGLU_MT_VALUES else 1
    step = -(-n // nt)
    run_jobs(lambda i: _swiglu_rows(g, u, out, i * step, min(n, (i + 1) * step)), -(-n // step), nt)


SWIGLU_MT_VALUES = 1 << 20  # ~0.1 ns each: below this a hand-over between threads costs more than it saves


def swiglu_fused(gu, out):
    """out = silu(gu[:, :n_ff]) * gu[:, n_ff:] with n_ff = out.shape[1]: swiglu on the fused [gate | up] matmul
    output as it comes (gu (n_tokens, 2 n_ff) C-contiguous), without copying its two halves out first; the same
    value for value as swiglu on the halves (the same silu_f32 and product)."""
    n, d = out.shape
    if n == 0:
        return
    if gu.shape != (n, 2 * d):
        raise ValueError(f"swiglu_fused: {gu.shape} is not [gate | up] for {out.shape}")
    nt = nb.get_num_threads() if n * d >= SWIGLU_MT_VALUES else 1
    step = -(-n // nt)
    run_jobs(lambda i: _swiglu_fused_rows(gu, out, i * step, min(n, (i + 1) * step)), -(-n // step), nt)


@nb.njit(**_JIT)
def _swiglu_fused_rows(gu, out, t0, t1):
    d = out.shape[1]
    for t in range(t0, t1):
        for i in range(d):
            out[t, i] = silu_f32(gu[t, i]) * gu[t, d + i]


@nb.njit(**_JIT)
def _swiglu_rows(g, u, out, t0, t1):
    d = g.shape[1]
    for t in range(t0, t1):
        for i in range(d):
            out[t, i] = silu_f32(g[t, i]) * u[t, i]


@nb.njit(**_JIT)
def add_inplace(x, y):
    """x += y.  (n_tokens, n_embd)"""
    n, d = x.shape
    for t in range(n):
        for i in range(d):
            x[t, i] += y[t, i]


# -- the paged f16 KV cache ---------------------------------------------------------------------------------------
@_intrinsic
def f32_to_f16_bits(typingctx, v):
    """float32 -> the bits of the nearest float16 (ties to even, overflow to inf): LLVM fptrunc, vcvtps2ph."""
    sig = _types.uint16(_types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], _ir.HalfType()), _ir.IntType(16))

    return sig, codegen


@nb.njit(**_JIT)
def store_kv_paged(k, v, k_pool, v_pool, table, seqs, cells):
    """Write new keys/values as f16 bits at each row's (sequence, cell).
    k: (n_tokens, n_head_kv * dk); v: (n_tokens, n_head_kv * dv); k_pool: (n_blocks, n_head_kv, KV_BLOCK, dk)."""
    n = k.shape[0]
    _, n_head_kv, _, dk = k_pool.shape
    dv = v_pool.shape[3]
    for t in range(n):
        c = cells[t]
        blk = table[seqs[t], c >> KV_BLOCK_SHIFT]
        off = c & (KV_BLOCK - 1)
        for h in range(n_head_kv):
            for i in range(dk):
                k_pool[blk, h, off, i] = f32_to_f16_bits(k[t, h * dk + i])
            for i in range(dv):
                v_pool[blk, h, off, i] = f32_to_f16_bits(v[t, h * dv + i])


def attention_paged(q, k_pool, v_pool, table, seqs, cells, n_head, scale, out):
    """Causal attention of each row over its own sequence's cells 0..cells[t] (its own key included; already
    stored), grouped-query KV heads; q rounded to f16 and the probabilities rounded to f16 as llama.cpp's
    F16-cache KQ/KQV products do. Each (row, head) is computed alone by the same code whatever the other rows
    and the job split are: its result does not depend on the batch.
    q: (n_tokens, n_head * dk); k_pool/v_pool: (n_blocks, n_head_kv, KV_BLOCK, d); out: (n_tokens, n_head * dv)."""
    n = q.shape[0]
    n_head_kv = k_pool.shape[1]
    group = n_head // n_head_kv
    # query heads of one KV head share each converted K/V row; split a group only to give every thread a job
    jobs_wanted = 2 * nb.get_num_threads()
    n_chunks = max(1, min(group, -(-jobs_wanted // max(1, n * n_head_kv))))
    while group % n_chunks:
        n_chunks += 1
    _attention_paged(q, k_pool, v_pool, table, seqs, cells, n_head, scale, out, n_chunks)


@nb.njit(inline="always", **_JIT)
def _cell_rows(pool, table, s_id, kvh, j, m, rows):
    """rows[u, :d] = cell j + u (u < m) of sequence s_id, KV head kvh, as f32 (pool: (n_blocks, n_head_kv, B, d))."""
    d = pool.shape[3]
    for u in range(m):
        c = j + u
        blk = table[s_id, c >> KV_BLOCK_SHIFT]
        off = c & (KV_BLOCK - 1)
        for i in range(d):
            rows[u, i] = f16_bits_to_f32(pool[blk, kvh, off, i])


@nb.njit(parallel=True, **_JIT)
def _attention_paged(q, k_pool, v_pool, table, seqs, cells, n_head, scale, out, n_chunks):
    # Cells go in groups of 4 from cell 0 (the last n_kv % 4 one at a time): a group's K / V rows are converted
    # once into a small f32 buffer, then each query head takes the group's 4 dot products in one pass over the
    # head dimension (4 independent sums) and adds the group's 4 probability-weighted V rows to its output in one
    # load / store of the accumulator (before: one cell at a time, the accumulator loaded and stored per cell).
    # A (row, head)'s arithmetic depends only on its cells, never on the batch or the job split. Measured on one
    # thread (n=4, 32 heads / 4 KV heads, d 64): 40 / 136 / 1000 cells 81 / 171 / 1268 us -> 53 / 119 / 758 us.
    n = q.shape[0]
    _, n_head_kv, _, dk = k_pool.shape
    dv = v_pool.shape[3]
    group = n_head // n_head_kv
    hc = group // n_chunks  # query heads per job
    for job in nb.prange(n * n_head_kv * n_chunks):
        t = job // (n_head_kv * n_chunks)
        kvh = (job // n_chunks) % n_head_kv
        h0 = kvh * group + (job % n_chunks) * hc
        s_id = seqs[t]
        n_kv = cells[t] + 1
        scores = np.empty((hc, n_kv), dtype=np.float32)
        qh = np.empty((hc, dk), dtype=np.float32)
        rows = np.empty((4, max(dk, dv)), dtype=np.float32)  # the group's converted K (then V) rows
        mx = np.full(hc, -np.inf, dtype=np.float32)
        for a in range(hc):
            for i in range(dk):
                qh[a, i] = f32_round_f16(q[t, (h0 + a) * dk + i])
        j = 0
        while j < n_kv:
            m = 4 if j + 4 <= n_kv else 1
            _cell_rows(k_pool, table, s_id, kvh, j, m, rows)
            for a in range(hc):
                if m == 4:
                    s0 = np.float32(0.0)
                    s1 = np.float32(0.0)
                    s2 = np.float32(0.0)
                    s3 = np.float32(0.0)
                    for i in range(dk):
                        qi = qh[a, i]
                        s0 += qi * rows[0, i]
                        s1 += qi * rows[1, i]
                        s2 += qi * rows[2, i]
                        s3 += qi * rows[3, i]
                    s0 *= scale
                    s1 *= scale
                    s2 *= scale
                    s3 *= scale
                    scores[a, j] = s0
                    scores[a, j + 1] = s1
                    scores[a, j + 2] = s2
                    scores[a, j + 3] = s3
                    if s0 > mx[a]:
                        mx[a] = s0
                    if s1 > mx[a]:
                        mx[a] = s1
                    if s2 > mx[a]:
                        mx[a] = s2
                    if s3 > mx[a]:
                        mx[a] = s3
                else:
                    s = np.float32(0.0)
                    for i in range(dk):
                        s += qh[a, i] * rows[0, i]
                    s *= scale
                    scores[a, j] = s
                    if s > mx[a]:
                        mx[a] = s
            j += m
        for a in range(hc):
            inv = np.float32(1.0) / _exp_sub_sum(scores[a], n_kv, 1.0, mx[a])
            for j in range(n_kv):  # the probabilities rounded to f16 (llama.cpp's F16-cache KQV product)
                scores[a, j] = f32_round_f16(scores[a, j] * inv)
        acc = np.zeros((hc, dv), dtype=np.float32)
        j = 0
        while j < n_kv:
            m = 4 if j + 4 <= n_kv else 1
            _cell_rows(v_pool, table, s_id, kvh, j, m, rows)
            for a in range(hc):
                if m == 4:
                    p0 = scores[a, j]
                    p1 = scores[a, j + 1]
                    p2 = scores[a, j + 2]
                    p3 = scores[a, j + 3]
                    for i in range(dv):
                        acc[a, i] += (p0 * rows[0, i] + p1 * rows[1, i]) + (p2 * rows[2, i] + p3 * rows[3, i])
                else:
                    p = scores[a, j]
                    for i in range(dv):
                        acc[a, i] += p * rows[0, i]
            j += m
        for a in range(hc):
            for i in range(dv):
                out[t, (h0 + a) * dv + i] = acc[a, i]


def gather_kv(pool, table_row, n, out):
    """The first n cells of one sequence as f32: out (n_head_kv, n, d) from pool (n_blocks, n_head_kv, B, d).
    One job per KV head on workers.run_jobs (no OpenMP region between the prompt attention's BLAS calls), all in
    the calling thread below GATHER_MT_CELLS values (~1 ns each: less work than a hand-over between threads)."""
    n_threads = 1 if n * pool.shape[1] * pool.shape[3] < GATHER_MT_CELLS else nb.get_num_threads()
    run_jobs(lambda h: _gather_kv_head(pool, table_row, n, h, out), pool.shape[1], n_threads)


GATHER_MT_CELLS = 1 << 22


@nb.njit(**_JIT)
def _gather_kv_head(pool, table_row, n, h, out):
    d = pool.shape[3]
    for j in range(n):
        blk = table_row[j >> KV_BLOCK_SHIFT]
        off = j & (KV_BLOCK - 1)
        for i in range(d):
            out[h, j, i] = f16_bits_to_f32(pool[blk, h, off, i])


@nb.njit(**_JIT)
def shift_kv_paged(k_pool, v_pool, table_row, keep, n_discard, n_used, cos, sin, n_rot):
    """Context shift of one sequence: drop cells keep..keep+n_discard-1, move the later cells down and
    re-rotate their keys by -n_discard positions (cos/sin: (1, n_rot/2) of that offset), keys re-rounded to f16."""
    _, n_head_kv, _, dk = k_pool.shape
    dv = v_pool.shape[3]
    half = n_rot // 2
    for j in range(keep + n_discard, n_used):
        d = j - n_discard
        sb = table_row[j >> KV_BLOCK_SHIFT]
        so = j & (KV_BLOCK - 1)
        db = table_row[d >> KV_BLOCK_SHIFT]
        do = d & (KV_BLOCK - 1)
        for h in range(n_head_kv):
            for i in range(dk):
                k_pool[db, h, do, i] = k_pool[sb, h, so, i]
            for i in range(dv):
                v_pool[db, h, do, i] = v_pool[sb, h, so, i]
            for i in range(half):
                a = f16_bits_to_f32(k_pool[db, h, do, 2 * i])
                b = f16_bits_to_f32(k_pool[db, h, do, 2 * i + 1])
                k_pool[db, h, do, 2 * i] = f32_to_f16_bits(a * cos[0, i] - b * sin[0, i])
                k_pool[db, h, do, 2 * i + 1] = f32_to_f16_bits(a * sin[0, i] + b * cos[0, i])
