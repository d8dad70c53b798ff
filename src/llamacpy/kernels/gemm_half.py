"""Prompt GEMM (n_tokens > DECODE_MAX) for F16 / BF16 weights, register-tiled, bit-exact with dense_simd.mv_half.

Owns: `gemm_half(isa, w, x, y)` -- y (n_tok, n_out) = x (n_tok, n_in) @ w.T on exactly the arguments of
dense_simd.mv_half (w read in place from the mmap: uint16 words for F16, an int16 view for BF16, see
dense_simd.weights; x already rounded to the weight type) -- its tile micro-kernel (LLVM IR built here), the
per-call packing of one row tile's weights / one token block's activations (copies in the tile's read order,
no second copy of the matrix), and `round_activations` (the prompt path's rounding, common.f16_round /
bf16_round's bits, compiled).

Numerics: mv_half gives each (row, token) ACC = 4 accumulators of L = width/4 f32 lanes; accumulator j takes
the FMAs of the vectors at k = s*ACC*L + j*L for s = 0, 1, ... in that order (accumulator 0 then also the
whole vectors past the last whole step), they are summed as (a0 + a2) + (a1 + a3), then simd's pairwise lane
sum, then the scalar tail is FMA'd one weight at a time. The four accumulators never mix before that sum, so
a tile may compute them one after the other as long as each sees its own FMAs in its own order: a tile of
RT rows x TT tokens makes ACC passes over K, pass j keeping accumulator j of its RT x TT pairs in registers
(6 x 4 = 24 zmm on avx512: one accumulator per pair live, where all four would need 96). The pass's weights
and activations are packed in pass order, so each pass streams memory in order (reading rows n_in * 2 or
n_in * 4 bytes apart in place cost L1 set conflicts: 0.6-0.8 of OpenBLAS's sgemm -> 0.85-0.98 packed).
Every float op is llvm.fma / fadd without fast-math flags (no re-association; the functions here are
compiled without fastmath for that), the conversions are mv_half's (fpext half -> vcvtph2ps; BF16 zext << 16;
both exact), so each (row, token) result is mv_half's bit for bit, whatever the number of rows or tokens
in the call. Remainders: a partial tile reads its last valid row / token again and stores only valid results.
Parallel over row tiles (prange); tokens in blocks of BLOCK_BYTES of f32 activations inside.
Must not: choose levels or paths (isa.py, linear.py); read activations that were not rounded (the tail and
the vectors must see the same values as mv_half).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .simd import WIDTH, _level, ir_hsum_f32

I16, I32, I64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
F32 = ir.FloatType()
ACC = 4  # accumulators per (row, token): dense_simd.ACC (GGML_F16_ARR)

# (RT rows, TT tokens) per level. avx512vnni measured on Zen 4, one thread, 512 tokens, GFLOP/s on 5632x2048 /
# 2048x5632 (same-run OpenBLAS f32 sgemm ~85-95; the shared VM makes +-10% noise): 4x4 89 / 81, 5x4 85 / 78,
# 6x4 85 / 86, 6x3 90 / 80, 7x3 77 / 78; 4x6 and 5x5 (> 32 registers with the operands) 53-77. The 16-register
# levels: RT * TT + RT + 1 <= 16 (3 x 4); neon (32 registers) as avx512, not measured here.
TILE = {"avx512vnni": (6, 4), "avxvnni": (3, 4), "avx2": (3, 4), "neon": (4, 4)}
# f32 activation bytes per outer token block (whole tiles): the weights are packed once per row tile and
# block, so larger blocks amortise that; measured (4x4 tile, 512 tokens, GFLOP/s 5632x2048 / 2048x5632):
# 192 KiB 53 / 28, 384 KiB 54 / 45, 2 MiB 81 / 79, 4 MiB 83 / 77, 16 MiB 84 / 67
BLOCK_BYTES = 4 << 20
LEVELS = tuple(TILE)
# No fastmath: numba's fast-math pass flags every float instruction of the function, the inlined tile's
# included, and LLVM could then re-associate the reduction (see dense_simd._JIT)
JIT = dict(cache=True, nogil=True)
PJIT = dict(JIT, parallel=True)


def _vt(e, n):
    return ir.VectorType(e, n)


def _clamp(builder, i, lim):
    last = builder.sub(lim, ir.Constant(I64, 1))
    return builder.select(builder.icmp_signed("<", i, last), i, last)


def _fma(builder, a, b, c):
    t = a.type
    name = f"llvm.fma.v{t.count}f32" if isinstance(t, ir.VectorType) else "llvm.fma.f32"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t, t, t]), name)
    return builder.call(fn, [a, b, c])


def _tile_codegen(level, bf16, RT, TT):
    """One tile: args (isa, w, wp, xp, x, y, r0, q, t0, n_tok): w (n_out, n_in) 16-bit words, wp its rows r0..
    packed by pack_rows, xp the token block packed by pack_tokens (q: this tile's index there), x (n_tok,
    n_in) f32 (the scalar tail is read there), y (n_tok, n_out) f32."""
    L = WIDTH[level] // 4
    S = ACC * L
    vf = _vt(F32, L)

    def cg(context, builder, sig, args):
        arrs = [context.make_array(t)(context, builder, v) for t, v in zip(sig.args[1:6], args[1:6])]
        W, WP, XP, X, Y = (a.data for a in arrs)
        n_out, n_in = cgutils.unpack_tuple(builder, arrs[0].shape)
        xpw = cgutils.unpack_tuple(builder, arrs[2].shape)[1]
        r0, q, t0, n_tok = args[6], args[7], args[8], args[9]
        c = lambda v: ir.Constant(I64, v)
        rows = [_clamp(builder, builder.add(r0, c(i)), n_out) for i in range(RT)]
        toks = [_clamp(builder, builder.add(t0, c(j)), n_tok) for j in range(TT)]
        wrow = [builder.mul(r, n_in) for r in rows]
        xrow = [builder.mul(t, n_in) for t in toks]
        xq = builder.mul(q, xpw)

        def wvec(i, u):  # row i's vector in slot u (see pack_rows)
            off = builder.add(builder.mul(u, c(RT * L)), c(i * L))
            p = builder.bitcast(builder.gep(WP, [off]), _vt(I16, L).as_pointer())
            h = builder.load(p, align=1)
            if bf16:
                b = builder.shl(builder.zext(h, _vt(I32, L)), ir.Constant(_vt(I32, L), [16] * L))
                return builder.bitcast(b, vf)
            return builder.fpext(builder.bitcast(h, _vt(ir.HalfType(), L)), vf)

        def xvec(j, u):  # token j's vector in slot u (see pack_tokens)
            off = builder.add(xq, builder.add(builder.mul(u, c(TT * L)), c(j * L)))
            p = builder.bitcast(builder.gep(XP, [off]), vf.as_pointer())
            return builder.load(p, align=1)

        def wscalar(i, k):
            h = builder.load(builder.gep(W, [builder.add(wrow[i], k)]))
            if bf16:
                return builder.bitcast(builder.shl(builder.zext(h, I32), ir.Constant(I32, 16)), F32)
            return builder.fpext(builder.bitcast(h, ir.HalfType()), F32)

        acc = [[[cgutils.alloca_once_value(builder, ir.Constant(vf, None)) for _ in range(ACC)]
                for _ in range(TT)] for _ in range(RT)]
        nsteps = builder.udiv(n_in, c(S))
        nfull = builder.mul(nsteps, c(S))
        nvec = builder.mul(builder.udiv(n_in, c(L)), c(L))
        for j in range(ACC):  # pass j: accumulator j of every (row, token), over the whole K in mv_half's order
            u0 = builder.mul(nsteps, c(j))  # the pass's first vector slot in the packed tokens
            with cgutils.for_range(builder, nsteps) as st:
                a = {(i, t): builder.load(acc[i][t][j]) for i in range(RT) for t in range(TT)}
                u = builder.add(u0, st.index)
                wv = [wvec(i, u) for i in range(RT)]
                for t in range(TT):
                    xv = xvec(t, u)
                    for i in range(RT):
                        a[i, t] = _fma(builder, wv[i], xv, a[i, t])
                for (i, t), v in a.items():
                    builder.store(v, acc[i][t][j])
        u0 = builder.mul(nsteps, c(ACC))
        with cgutils.for_range_slice(builder, nfull, nvec, c(L)) as (k, r):  # whole vectors past the last step
            u = builder.add(u0, r)
            wv = [wvec(i, u) for i in range(RT)]
            for t in range(TT):
                xv = xvec(t, u)
                for i in range(RT):
                    builder.store(_fma(builder, wv[i], xv, builder.load(acc[i][t][0])), acc[i][t][0])
        sums = [[cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0)) for _ in range(TT)] for _ in range(RT)]
        for i in range(RT):
            for t in range(TT):
                a0, a1, a2, a3 = (builder.load(acc[i][t][j]) for j in range(ACC))
                v = builder.fadd(builder.fadd(a0, a2), builder.fadd(a1, a3))
                builder.store(ir_hsum_f32(builder, v), sums[i][t])
        with cgutils.for_range_slice(builder, nvec, n_in, c(1)) as (k, _):  # the scalar tail, in order
            wv = [wscalar(i, k) for i in range(RT)]
            for t in range(TT):
                xs = builder.load(builder.gep(X, [builder.add(xrow[t], k)]))
                for i in range(RT):
                    builder.store(_fma(builder, wv[i], xs, builder.load(sums[i][t])), sums[i][t])
        for i in range(RT):
            ri = builder.add(r0, c(i))
            for t in range(TT):
                tj = builder.add(t0, c(t))
                ok = builder.and_(builder.icmp_signed("<", ri, n_out), builder.icmp_signed("<", tj, n_tok))
                with builder.if_then(ok):
                    builder.store(builder.load(sums[i][t]), builder.gep(Y, [builder.add(builder.mul(tj, n_out), ri)]))
        return context.get_dummy_value()

    return cg


def _c2(*arrs):
    return all(isinstance(a, types.Array) and a.layout == "C" and a.ndim == 2 for a in arrs)


@intrinsic
def _tile(typingctx, isa, w, wp, xp, x, y, r0, q, t0, t_end):
    level = _level(isa)
    if level not in TILE or not _c2(w, xp, x, y) or w.dtype not in (types.uint16, types.int16):
        return None
    if not (isinstance(wp, types.Array) and wp.layout == "C" and wp.ndim == 1 and wp.dtype == w.dtype):
        return None
    if not all(a.dtype == types.float32 for a in (xp, x, y)):
        return None
    RT, TT = TILE[level]
    return (types.void(isa, w, wp, xp, x, y, types.int64, types.int64, types.int64, types.int64),
            _tile_codegen(level, w.dtype == types.int16, RT, TT))


@intrinsic
def tile_shape(typingctx, isa):
    """(rows, tokens) of the level's register tile, as compile-time constants."""
    RT, TT = TILE[_level(isa)]

    def cg(context, builder, sig, args):
        return context.make_tuple(builder, sig.return_type, [ir.Constant(I64, RT), ir.Constant(I64, TT)])

    return types.UniTuple(types.int64, 2)(isa), cg


@nb.njit(**JIT)
def _token_block(xbytes, TT):
    return max(TT, BLOCK_BYTES // max(xbytes, 1) // TT * TT)


@intrinsic
def lanes(typingctx, isa):
    """f32 lanes of the level's vectors (width / 4), a compile-time constant."""
    L = WIDTH[_level(isa)] // 4

    def cg(context, builder, sig, args):
        return ir.Constant(I64, L)

    return types.int64(isa), cg


@nb.njit(**PJIT)
def pack_tokens(isa, x, tb, te, xp):
    """Tokens tb..te-1 of x in tile order, the whole vectors of a tile's TT tokens in the order its passes read
    them: slot u = j * nsteps + s holds the vectors at k = s * ACC * L + j * L (step s, accumulator j), then
    slot ACC * nsteps + r the r-th whole vector past the last whole step; xp[q, (u * TT + t) * L + l]. Each
    pass then streams memory in order (no L1 set conflicts between rows n_in * 4 bytes apart, no strides).
    A partial last tile repeats its last valid token."""
    RT, TT = tile_shape(isa)
    nq = (te - tb + TT - 1) // TT
    for q in nb.prange(nq):
        L = lanes(isa)  # inside the parallel body: a compile-time constant there (see dense_simd's doc)
        nsteps = x.shape[1] // (ACC * L)
        nv = x.shape[1] // L
        xq = xp[q]  # (nv * L * TT,)
        for t in range(TT):
            xr = x[min(tb + q * TT + t, te - 1)]  # (n_in,)
            for s in range(nsteps):
                for j in range(ACC):
                    o = ((j * nsteps + s) * TT + t) * L
                    k = (s * ACC + j) * L
                    for l in range(L):
                        xq[o + l] = xr[k + l]
            for v in range(nsteps * ACC, nv):
                for l in range(L):
                    xq[(v * TT + t) * L + l] = xr[v * L + l]


@intrinsic
def _f16_round1(typingctx, v):
    """One float32 rounded to float16 (fptrunc: nearest, ties to even -- vcvtps2ph) and back (exact)."""
    if v != types.float32:
        return None

    def cg(context, builder, sig, args):
        return builder.fpext(builder.fptrunc(args[0], ir.HalfType()), F32)

    return types.float32(v), cg


@nb.njit(**PJIT)
def round_activations(x, bf16, out):
    """out (n, k) = x (n, k) f32 rounded to the weight type, bit for bit as common.f16_round / bf16_round
    (ggml's GGML_FP32_TO_BF16: nearest, ties to even, NaN quieted) -- a compiled loop over the rows, where
    numpy's float16 casts take ~7 ms per 512 x 2048 prompt (~7% of a 1.1B F16 pp512)."""
    n, k = x.shape
    if bf16:
        u = x.view(np.uint32)
        o = out.view(np.uint32)
        for t in nb.prange(n):
            ur = u[t]  # (k,)
            orow = o[t]
            for i in range(k):
                b = ur[i]
                r = (b + (np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16) << np.uint32(16)
                q = ((b >> np.uint32(16)) | np.uint32(64)) << np.uint32(16)
                orow[i] = q if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else r
    else:
        for t in nb.prange(n):
            xr = x[t]  # (k,)
            orow = out[t]
            for i in range(k):
                orow[i] = _f16_round1(xr[i])


@nb.njit(inline="always", **JIT)
def pack_rows(isa, w, r0, wp):
    """Rows r0..r0+RT-1 of w in slot order (pack_tokens' slots): wp[(u * RT + i) * L + l]; rows past the end
    repeat the last row. A pass then reads its weights in order, each line once."""
    RT, TT = tile_shape(isa)
    L = lanes(isa)
    n_out, n_in = w.shape
    nsteps = n_in // (ACC * L)
    nv = n_in // L
    last = n_out - 1
    for s in range(nsteps):
        for j in range(ACC):
            o = (j * nsteps + s) * RT * L
            k = (s * ACC + j) * L
            for i in range(RT):
                src = min(r0 + i, last)
                for l in range(L):
                    wp[o + i * L + l] = w[src, k + l]
    for v in range(nsteps * ACC, nv):
        for i in range(RT):
            src = min(r0 + i, last)
            for l in range(L):
                wp[(v * RT + i) * L + l] = w[src, v * L + l]


@nb.njit(**PJIT)
def gemm_half(isa, w, x, y):
    """y (n_tok, n_out) = x (n_tok, n_in) f32 (rounded to the weight type) @ w.T; w (n_out, n_in) uint16 (F16)
    or int16 (BF16 bits): dense_simd.mv_half's arguments and results."""
    n_tok, n_out = y.shape
    RT, TT = tile_shape(isa)
    L = lanes(isa)
    nrt = (n_out + RT - 1) // RT
    TB = _token_block(4 * x.shape[1], TT)
    xp = np.empty(((min(TB, n_tok) + TT - 1) // TT, x.shape[1] // L * L * TT), np.float32)
    for tb in range(0, n_tok, TB):
        te = min(n_tok, tb + TB)
        pack_tokens(isa, x, tb, te, xp)
        for rt in nb.prange(nrt):
            wp = np.empty(x.shape[1] // L * L * RT, w.dtype)
            pack_rows(isa, w, rt * RT, wp)
            for t0 in range(tb, te, TT):
                _tile(isa, w, wp, xp, x, y, rt * RT, (t0 - tb) // TT, t0, te)
