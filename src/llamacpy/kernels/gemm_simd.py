"""Prompt GEMMs (n_tokens > DECODE_MAX) for the explicit-SIMD types, register-tiled, on the decode kernels' data.

Owns: `GEMM` (ggml type -> kernel), `gemm_q4_0` / `gemm_q8_0(isa, ...)` taking exactly the arguments of
legacy_simd's `mv_q4_0` / `mv_q8_0` (the same repacked weights, the same `prep`-ed Q8_0 activations: no second
copy of anything), and the tile micro-kernels they call.

A tile is TILE[level] = (RT rows, TT tokens) whose RT*TT int32 and f32 accumulators live in registers: per
group of width/4 blocks, each weight vector is loaded (and nibble-split) once and dotted with the TT tokens'
activation vectors, each activation vector once for the RT rows. The micro-kernel is one numba intrinsic whose
loop body is LLVM IR built here (Python loops over the tile unroll at compile time); the integer dot steps are
simd.py's (`ir_dot_u8s8`, `ir_dot_s8s8b`). Parallel over row tiles (prange), tokens in tiles inside, in blocks
of TOKEN_BLOCK tokens so the activations being reused stay in L2. Remainders: a partial tile reads its last
valid row / token again for the missing ones and stores only the valid results.
Bit-exact with the decode kernels, for every (row, token): the integer sums are exact (the same dot steps on
the same bytes; int32 addition in any order gives the same sum), and the f32 part is the decode kernel's op for
op -- per group acc = cvt(isum) * (d_w * d_x) + acc in the same group order, then simd.vhsum's pairwise
horizontal sum. So a row's result never depends on the batch (prefix reuse and batching stay exact).
Must not: quantize activations (q8.py), repack weights (legacy_simd.py), or choose levels / paths (isa.py,
linear.py).
"""

from __future__ import annotations

import numba as nb
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .common import PJIT, Q4_0, Q8_0
from .simd import WIDTH, _level, ir_dot_s8s8b, ir_dot_u8s8, ir_hsum_f32

I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F32 = ir.FloatType()
FAST = ("fast",)

# (rows, tokens) per register tile; measured on Zen 4 avx512vnni (see benchmarks/RESULTS.md)
TILE = {"avx512vnni": (4, 3), "avxvnni": (4, 3), "avx2": (4, 3), "neon": (4, 4), "generic": (2, 2)}
TOKEN_BLOCK = 64  # tokens per outer block (their activations are re-read from cache for every row tile)


def _vt(e, n):
    return ir.VectorType(e, n)


class _Arrays:
    """Typed element pointers of the C-contiguous array arguments."""

    def __init__(self, context, builder, tys, vals):
        self.data = [context.make_array(t)(context, builder, v).data for t, v in zip(tys, vals)]

    def vec(self, builder, k, idx, elem, n):
        p = builder.bitcast(builder.gep(self.data[k], [idx]), _vt(elem, n).as_pointer())
        return builder.load(p, align=1)


def _clamp(builder, i, lim):
    """min(i, lim - 1) for i64 values."""
    last = builder.sub(lim, ir.Constant(I64, 1))
    return builder.select(builder.icmp_signed("<", i, last), i, last)


def _tile_codegen(level, nsteps, q4, RT, TT):
    """Codegen of one tile for Q4_0 (q4: arrays qs, d, xlo, xhi, xd, xo, y) or Q8_0 (qs, d, xq, xd, xo, y);
    trailing args r0, t0, t_end (i64)."""
    W = WIDTH[level]
    n32 = W // 4
    vi32, vf32 = _vt(I32, n32), _vt(F32, n32)

    def cg(context, builder, sig, args):
        nar = 7 if q4 else 6
        A = _Arrays(context, builder, sig.args[1:1 + nar], args[1:1 + nar])
        shp = lambda k: cgutils.unpack_tuple(builder, context.make_array(sig.args[1 + k])(
            context, builder, args[1 + k]).shape)
        QS, D = 0, 1
        XA, XB = 2, (3 if q4 else None)
        XD, XO, Y = (4, 5, 6) if q4 else (3, 4, 5)
        H = shp(QS)[1]
        nbp = shp(D)[1]
        n_out = shp(Y)[1]
        r0, t0, n_tok = args[1 + nar], args[2 + nar], args[3 + nar]  # n_tok: tokens are valid below it
        c = lambda v: ir.Constant(I64, v)
        rows = [_clamp(builder, builder.add(r0, c(i)), n_out) for i in range(RT)]
        toks = [_clamp(builder, builder.add(t0, c(j)), n_tok) for j in range(TT)]
        qrow = [builder.mul(r, H) for r in rows]
        xrow = [builder.mul(t, H) for t in toks]
        drow = [builder.mul(r, nbp) for r in rows]
        xdrow = [builder.mul(t, nbp) for t in toks]
        facc = [[cgutils.alloca_once_value(builder, ir.Constant(vf32, None)) for _ in range(TT)] for _ in range(RT)]
        ngroups = builder.udiv(nbp, c(n32))
        gstride = nsteps * W  # quant bytes of one group
        with cgutils.for_range(builder, ngroups) as loop:
            g = loop.index
            b0 = builder.mul(g, c(n32))
            q0 = builder.mul(g, c(gstride))
            iacc = [[A.vec(builder, XO, builder.add(xdrow[j], b0), I32, n32) for j in range(TT)] for _ in range(RT)]
            for s in range(nsteps):
                off = builder.add(q0, c(s * W))
                xa = [A.vec(builder, XA, builder.add(xrow[j], off), I8, W) for j in range(TT)]
                xb = [A.vec(builder, XB, builder.add(xrow[j], off), I8, W) for j in range(TT)] if q4 else None
                for i in range(RT):
                    w = A.vec(builder, QS, builder.add(qrow[i], off), I8, W)
                    if q4:
                        lo = builder.and_(w, ir.Constant(_vt(I8, W), [15] * W))
                        hi = builder.lshr(w, ir.Constant(_vt(I8, W), [4] * W))
                        for j in range(TT):
                            a = ir_dot_u8s8(builder, level, iacc[i][j], lo, xa[j])
                            iacc[i][j] = ir_dot_u8s8(builder, level, a, hi, xb[j])
                    else:
                        for j in range(TT):
                            iacc[i][j] = ir_dot_s8s8b(builder, level, iacc[i][j], w, xa[j])
            dv = [builder.fpext(builder.bitcast(A.vec(builder, D, builder.add(drow[i], b0), I16, n32),
                                                _vt(ir.HalfType(), n32)), vf32) for i in range(RT)]
            xdv = [A.vec(builder, XD, builder.add(xdrow[j], b0), F32, n32) for j in range(TT)]
            for i in range(RT):
                for j in range(TT):
                    sc = builder.fmul(dv[i], xdv[j], flags=FAST)
                    p = builder.fmul(builder.sitofp(iacc[i][j], vf32), sc, flags=FAST)
                    builder.store(builder.fadd(p, builder.load(facc[i][j]), flags=FAST), facc[i][j])
        ydata = A.data[Y]
        for i in range(RT):
            ri = builder.add(r0, c(i))
            for j in range(TT):
                tj = builder.add(t0, c(j))
                ok = builder.and_(builder.icmp_signed("<", ri, n_out), builder.icmp_signed("<", tj, n_tok))
                with builder.if_then(ok):
                    s = ir_hsum_f32(builder, builder.load(facc[i][j]))
                    builder.store(s, builder.gep(ydata, [builder.add(builder.mul(tj, n_out), ri)]))
        return context.get_dummy_value()

    return cg


def _c2(*arrs):
    return all(isinstance(a, types.Array) and a.layout == "C" and a.ndim == 2 for a in arrs)


@intrinsic
def _tile_q4_0(typingctx, isa, qs, d, xlo, xhi, xd, xo, y, r0, t0, t_end):
    level = _level(isa)
    if not _c2(qs, d, xlo, xhi, xd, xo, y):
        return None
    RT, TT = TILE[level]
    return types.void(isa, qs, d, xlo, xhi, xd, xo, y, types.int64, types.int64, types.int64), \
        _tile_codegen(level, 4, True, RT, TT)


@intrinsic
def _tile_q8_0(typingctx, isa, qs, d, xq, xd, xo, y, r0, t0, t_end):
    level = _level(isa)
    if not _c2(qs, d, xq, xd, xo, y):
        return None
    RT, TT = TILE[level]
    return (types.void(isa, qs, d, xq, xd, xo, y, types.int64, types.int64, types.int64),
            _tile_codegen(level, 8, False, RT, TT))


@intrinsic
def tile_shape(typingctx, isa):
    """(rows, tokens) of the level's register tile, as compile-time constants."""
    RT, TT = TILE[_level(isa)]

    def cg(context, builder, sig, args):
        return context.make_tuple(builder, sig.return_type, [ir.Constant(I64, RT), ir.Constant(I64, TT)])

    return types.UniTuple(types.int64, 2)(isa), cg


@nb.njit(**PJIT)
def gemm_q4_0(isa, qs, d, xlo, xhi, xd, xo, y):
    """y (n_tok, n_out) = W @ x; the arguments of legacy_simd.mv_q4_0."""
    n_tok, n_out = y.shape
    RT, TT = tile_shape(isa)
    nrt = (n_out + RT - 1) // RT
    for tb in range(0, n_tok, TOKEN_BLOCK):
        te = min(n_tok, tb + TOKEN_BLOCK)
        for rt in nb.prange(nrt):
            for t0 in range(tb, te, TT):
                _tile_q4_0(isa, qs, d, xlo, xhi, xd, xo, y, rt * RT, t0, te)


@nb.njit(**PJIT)
def gemm_q8_0(isa, qs, d, xq, xd, xo, y):
    """y (n_tok, n_out) = W @ x; the arguments of legacy_simd.mv_q8_0."""
    n_tok, n_out = y.shape
    RT, TT = tile_shape(isa)
    nrt = (n_out + RT - 1) // RT
    for tb in range(0, n_tok, TOKEN_BLOCK):
        te = min(n_tok, tb + TOKEN_BLOCK)
        for rt in nb.prange(nrt):
            for t0 in range(tb, te, TT):
                _tile_q8_0(isa, qs, d, xq, xd, xo, y, rt * RT, t0, te)


GEMM = {Q4_0: gemm_q4_0, Q8_0: gemm_q8_0}
