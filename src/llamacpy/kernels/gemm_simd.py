"""Register-tiled int8 GEMMs for the explicit-SIMD types, on the decode kernels' data: prompts (n_tokens >
DECODE_MAX) and decode calls of 1..DECODE_MAX tokens (one sequence's next token; the server's step over its busy
slots).

Owns: `GEMM` (ggml type -> kernel), `gemm_q4_0` / `gemm_q8_0` / `gemm_q4_k` / `gemm_q6_k(isa, tile, ...)` taking
the decode kernels' arguments after a Tile token -- `mv_q4_0` / `mv_q8_0` (legacy_simd.py, Q8_0 activations)
and `mv_q4_k` / `mv_q6_k` (kquants_simd.py, Q8_K): the same repacked weights, the same `prep`-ed activations,
no second copy of anything; the tile micro-kernels they call; the tile tables (TILE / TILE_K: prompts; SMALL:
decode calls, per token count) with `prompt_tile` / `small_tile`.

A tile (a `tile(RT, TT, spread)` token: its numba type carries the shape, so each shape compiles and caches its
own kernel) = RT rows x TT tokens whose RT*TT int32 and f32 accumulators live in registers: per group of
width/4 blocks (chunks; Q6_K: per super-block), each weight vector is loaded (and nibble-split) once and dotted
with the TT tokens' activation vectors, each activation vector once for the RT rows. The micro-kernel is one
numba intrinsic whose loop body is LLVM IR built here (Python loops over the tile unroll at compile time); the
integer dot steps are simd.py's (`ir_dot_u8s8`, `ir_dot_s8s8b`). Parallel over row tiles (prange), tokens in
tiles inside, in blocks of BLOCK_BYTES of activations so the activations being reused stay in L2. Row tile rt
holds rows rt*RT + i, or with `spread` rows rt + i*nrt (nrt row tiles): then every row slot walks the matrix in
address order, which the hardware prefetchers follow (decode batches read the weights from DRAM; see SMALL).
Remainders: a partial tile reads its last valid row / token again for the missing ones and stores only the
valid results.
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
from numba.extending import NativeValue, intrinsic, models, register_model, typeof_impl, unbox

from .common import JIT, PJIT, Q4_0, Q4_K, Q6_K, Q8_0
from .simd import WIDTH, _level, ir_dot_s8s8b, ir_dot_u8s8, ir_hsum_f32

I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F32 = ir.FloatType()
FAST = ("fast",)

# (rows, tokens) per register tile; measured on Zen 4 avx512vnni (see benchmarks/RESULTS.md)
TILE = {"avx512vnni": (4, 3), "avxvnni": (4, 3), "avx2": (4, 3), "neon": (4, 4), "generic": (2, 2)}
# Q4_K keeps two int32 sums per (row, token), Q6_K one plus per-step products: their own tiles
TILE_K = {Q4_K: {"avx512vnni": (3, 3), "avxvnni": (2, 3), "avx2": (2, 3), "neon": (3, 3), "generic": (2, 2)},
          Q6_K: {"avx512vnni": (3, 3), "avxvnni": (3, 3), "avx2": (3, 3), "neon": (4, 3), "generic": (2, 2)}}
# activation bytes per outer token block (whole tiles, at least one): those tokens' activations are re-read from
# cache for every row tile, so they should stay in L2. Measured as fixed token counts on Q4_0/Q8_0 5632x2048 x 512
# tokens (2 / 4 KiB a token), one thread: 32 -> 225/228 GOP/s, 64 -> 257/270, 128 -> 274/292, 256 -> 275/300; as
# bytes on that shape and on 2048x5632 (ffn_down): 128 KiB 256/261 and 267/249, 384 KiB 271/284 and 264/242,
# 768 KiB 266/302 and 269/267
BLOCK_BYTES = 768 << 10

# Decode calls (1..8 tokens, up to linear.DECODE_MAX): the tile per type, level and token count n, for the GEMM
# to replace the decode kernel (which redoes the weight loads / nibble splits per token and shares no activation
# load between rows); n absent: the decode kernel. All are "spread" tiles (tile rt holds rows rt + i * nrt): each
# row slot then streams through memory in address order -- measured from DRAM (1 thread, 5632x2048 matrices
# cycled over 96 MiB, ms per call) a contiguous 2x2 tile took 0.70 at n=2 vs 0.36 spread (mv 0.38), and even at
# n=1 a 3-row spread tile (TT=1) beats the one-row decode kernel (Q4_0 0.23 vs 0.32, Q6_K 0.44 vs 0.64): more
# independent streams per core. From cache the two orders are alike; software prefetch of the contiguous tiles'
# next rows (2 or 8 tiles ahead) measured no gain. Tables (n = 1..8, per type): benchmarks/RESULTS.md, "Decode
# calls (1..8 tokens) through spread GEMM tiles" (None here: the decode kernel measured best). Measured on
# avx512vnni and avx2 (Zen 4/5 VM, one thread); the other levels keep the decode kernels. A new entry needs
# tests/test_gemm_simd.py's bitwise checks: with fast-math flags (here and in simd.vmul / vfma) LLVM may
# reassociate cvt(isum) * (d_w * d_x) differently per context -- an avx2 1x1 and a generic 4x3 tile differ from
# the decode kernel in the last bit on ~1 % of outputs (neither is used).
# Few distinct tiles per type: each is one more compilation on a first run (Q4_0 n=6 / 8 take 2x3 / 2x4,
# within 1 / 6 % of the best).
_S = lambda *t: {n: (tl[0], tl[1], True) for n, tl in enumerate(t, 1) if tl is not None}
SMALL = {Q4_0: {"avx512vnni": _S((3, 1), (2, 2), (2, 3), (2, 4), (2, 3), (2, 3), (2, 4), (2, 4)),
                "avx2": _S((3, 1), (3, 1), (2, 3), (2, 4), None, (2, 3), (2, 4), (2, 4))},
         Q8_0: {"avx512vnni": _S((3, 1), (2, 2), (2, 3), (2, 4), (2, 3), (4, 3), (4, 3), (4, 3)),
                "avx2": _S((2, 1), (2, 1), (3, 1), (2, 2), None, (2, 2), (3, 1), (2, 2))},
         Q4_K: {"avx512vnni": _S((2, 1), (2, 2), (2, 3), (2, 2), (2, 3), (2, 3), (2, 2), (2, 2)),
                "avx2": _S((2, 1), (2, 2), (3, 3), (2, 2), (2, 2), (2, 2), (2, 2), (2, 2))},
         Q6_K: {"avx512vnni": _S((3, 1), (2, 2), (2, 3), (2, 2), (2, 2), (2, 2), (2, 4), (2, 2)),
                "avx2": _S((3, 1), (2, 2), (3, 3), (2, 4), (3, 3), (3, 3), (3, 3), (3, 3))}}


# -- the tile token: a value whose numba type carries (RT, TT), as simd.Isa carries the level ------------------
class Tile:
    """(rows, tokens) of a register tile, passed to the GEMMs; each shape compiles (and caches) its own kernel."""

    def __init__(self, rt: int, tt: int, spread: bool = False):
        self.rt, self.tt, self.spread = rt, tt, spread

    def __repr__(self):
        return f"Tile({self.rt}, {self.tt}{', spread' if self.spread else ''})"


class TileType(types.Type):
    def __init__(self, rt: int, tt: int, spread: bool = False):
        self.rt, self.tt, self.spread = rt, tt, spread
        super().__init__(name=f"Tile({rt}x{tt}{'s' if spread else ''})")


_TILES: dict = {}


def tile(rt: int, tt: int, spread: bool = False) -> Tile:
    """The (shared) token of a tile shape."""
    k = (int(rt), int(tt), bool(spread))
    return _TILES.setdefault(k, Tile(*k))


def small_tile(typ: int, level: str, n: int):
    """The decode tile (see SMALL) for n tokens, or None where the decode kernel is the measured best."""
    t = SMALL.get(typ, {}).get(level, {}).get(n)
    return None if t is None else tile(*t)


def prompt_tile(typ: int, level: str) -> Tile:
    """The prompt (large n) tile of a type at a level."""
    return tile(*(TILE_K[typ][level] if typ in TILE_K else TILE[level]))


@typeof_impl.register(Tile)
def _typeof_tile(val, c):
    t = val.__dict__.get("_nbtype")
    if t is None:  # made once per token: constructing (interning) a numba Type per call measured 3.5 us vs 1.2
        t = val._nbtype = TileType(val.rt, val.tt, val.spread)
    return t


register_model(TileType)(models.OpaqueModel)


@unbox(TileType)
def _unbox_tile(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


def _shape(t):
    if not isinstance(t, TileType):
        raise TypeError("second argument must be a Tile token")
    return t.rt, t.tt


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
        A = _Arrays(context, builder, sig.args[2:2 + nar], args[2:2 + nar])
        shp = lambda k: cgutils.unpack_tuple(builder, context.make_array(sig.args[2 + k])(
            context, builder, args[2 + k]).shape)
        QS, D = 0, 1
        XA, XB = 2, (3 if q4 else None)
        XD, XO, Y = (4, 5, 6) if q4 else (3, 4, 5)
        H = shp(QS)[1]
        nbp = shp(D)[1]
        n_out = shp(Y)[1]
        r0, rs, t0, n_tok = args[2 + nar], args[3 + nar], args[4 + nar], args[5 + nar]  # n_tok: tokens are valid below it
        c = lambda v: ir.Constant(I64, v)
        rows = [_clamp(builder, builder.add(r0, builder.mul(rs, c(i))), n_out) for i in range(RT)]
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
        _store(builder, A.data[Y], facc, r0, rs, t0, n_out, n_tok, RT, TT)
        return context.get_dummy_value()

    return cg


def _q4_k_codegen(level, RT, TT):
    """One Q4_K tile (mv_q4_k's arrays: qs, sl, sh, ml, mh, d, dmin, xa, xb, bl, bh, xd, y; then r0, t0, t_end):
    per group of n32 chunks, mv_q4_k's ops -- low / high nibble sums, times the 6-bit scales, minus mins times
    bsums, per-super-block d / dmin, times the activations' d, accumulated in the same order."""
    W = WIDTH[level]
    n32 = W // 4
    vi32, vf32 = _vt(I32, n32), _vt(F32, n32)

    def cg(context, builder, sig, args):
        nar = 13
        A = _Arrays(context, builder, sig.args[2:2 + nar], args[2:2 + nar])
        shp = lambda k: cgutils.unpack_tuple(builder, context.make_array(sig.args[2 + k])(
            context, builder, args[2 + k]).shape)
        QS, SL, SH, ML, MH, D, DMIN, XA, XB, BL, BH, XD, Y = range(13)
        H = shp(QS)[1]
        nchp = shp(SL)[1]
        nSp = shp(D)[1]
        n_out = shp(Y)[1]
        r0, rs, t0, n_tok = args[2 + nar], args[3 + nar], args[4 + nar], args[5 + nar]
        c = lambda v: ir.Constant(I64, v)
        rows = [_clamp(builder, builder.add(r0, builder.mul(rs, c(i))), n_out) for i in range(RT)]
        toks = [_clamp(builder, builder.add(t0, c(j)), n_tok) for j in range(TT)]
        qrow = [builder.mul(r, H) for r in rows]
        xrow = [builder.mul(t, H) for t in toks]
        crow = [builder.mul(r, nchp) for r in rows]
        xcrow = [builder.mul(t, nchp) for t in toks]
        srow = [builder.mul(r, nSp) for r in rows]
        facc = [[cgutils.alloca_once_value(builder, ir.Constant(vf32, None)) for _ in range(TT)] for _ in range(RT)]
        z = ir.Constant(vi32, None)
        rep4 = ir.Constant(_vt(I32, n32), [k // 4 for k in range(n32)])
        with cgutils.for_range(builder, builder.udiv(nchp, c(n32))) as loop:
            g = loop.index
            c0 = builder.mul(g, c(n32))
            q0 = builder.mul(g, c(8 * W))
            lo = [[z] * TT for _ in range(RT)]
            hi = [[z] * TT for _ in range(RT)]
            for s in range(8):
                off = builder.add(q0, c(s * W))
                xa = [A.vec(builder, XA, builder.add(xrow[j], off), I8, W) for j in range(TT)]
                xb = [A.vec(builder, XB, builder.add(xrow[j], off), I8, W) for j in range(TT)]
                for i in range(RT):
                    w = A.vec(builder, QS, builder.add(qrow[i], off), I8, W)
                    wl = builder.and_(w, ir.Constant(_vt(I8, W), [15] * W))
                    wh = builder.lshr(w, ir.Constant(_vt(I8, W), [4] * W))
                    for j in range(TT):
                        lo[i][j] = ir_dot_u8s8(builder, level, lo[i][j], wl, xa[j])
                        hi[i][j] = ir_dot_u8s8(builder, level, hi[i][j], wh, xb[j])
            u8 = lambda k, i: builder.zext(A.vec(builder, k, builder.add(crow[i], c0), I8, n32), vi32)
            blv = [A.vec(builder, BL, builder.add(xcrow[j], c0), I32, n32) for j in range(TT)]
            bhv = [A.vec(builder, BH, builder.add(xcrow[j], c0), I32, n32) for j in range(TT)]
            xdv = [A.vec(builder, XD, builder.add(xcrow[j], c0), F32, n32) for j in range(TT)]
            S0 = builder.udiv(c0, c(4))
            for i in range(RT):
                sl, sh, ml, mh = (u8(k, i) for k in (SL, SH, ML, MH))
                h4 = lambda k: builder.fpext(builder.bitcast(builder.shuffle_vector(
                    A.vec(builder, k, builder.add(srow[i], S0), I16, n32 // 4), ir.Constant(_vt(I16, n32 // 4), None),
                    rep4), _vt(ir.HalfType(), n32)), vf32)
                dv, mv = h4(D), h4(DMIN)
                for j in range(TT):
                    isum = builder.add(builder.mul(sl, lo[i][j]), builder.mul(sh, hi[i][j]))
                    msum = builder.add(builder.mul(ml, blv[j]), builder.mul(mh, bhv[j]))
                    v = builder.fsub(builder.fmul(builder.sitofp(isum, vf32), dv, flags=FAST),
                                     builder.fmul(builder.sitofp(msum, vf32), mv, flags=FAST), flags=FAST)
                    p = builder.fmul(v, xdv[j], flags=FAST)
                    builder.store(builder.fadd(p, builder.load(facc[i][j]), flags=FAST), facc[i][j])
        _store(builder, A.data[Y], facc, r0, rs, t0, n_out, n_tok, RT, TT)
        return context.get_dummy_value()

    return cg


def _q6_k_codegen(level, RT, TT):
    """One Q6_K tile (mv_q6_k's arrays: qv, sc, d, xq, xo, xd, y; then r0, t0, t_end): per super-block, per
    vector of units, mv_q6_k's 6-bit value building (once per row), dots, integer scale products, and the f32
    d_w * d_x scaling in the same order."""
    W = WIDTH[level]
    n32 = W // 4
    vi32, vf32 = _vt(I32, n32), _vt(F32, n32)
    nv = 64 // W

    def cg(context, builder, sig, args):
        nar = 7
        A = _Arrays(context, builder, sig.args[2:2 + nar], args[2:2 + nar])
        shp = lambda k: cgutils.unpack_tuple(builder, context.make_array(sig.args[2 + k])(
            context, builder, args[2 + k]).shape)
        QV, SC, D, XQ, XO, XD, Y = range(7)
        nS = shp(D)[1]
        n_out = shp(Y)[1]
        r0, rs, t0, n_tok = args[2 + nar], args[3 + nar], args[4 + nar], args[5 + nar]
        c = lambda v: ir.Constant(I64, v)
        k8 = lambda v: ir.Constant(_vt(I8, W), [v] * W)
        rows = [_clamp(builder, builder.add(r0, builder.mul(rs, c(i))), n_out) for i in range(RT)]
        toks = [_clamp(builder, builder.add(t0, c(j)), n_tok) for j in range(TT)]
        f16 = lambda i, S: builder.fpext(builder.bitcast(builder.load(builder.gep(A.data[D], [
            builder.add(builder.mul(rows[i], nS), S)])), ir.HalfType()), F32)
        facc = [[cgutils.alloca_once_value(builder, ir.Constant(vf32, None)) for _ in range(TT)] for _ in range(RT)]
        z = ir.Constant(vi32, None)
        rep4 = ir.Constant(_vt(I32, n32), [k // 4 for k in range(n32)])
        with cgutils.for_range(builder, nS) as loop:
            S = loop.index
            isum = [[z] * TT for _ in range(RT)]
            for v in range(nv):
                x0 = [builder.add(builder.mul(builder.add(builder.mul(toks[j], nS), S), c(256)), c(v * 4 * W))
                      for j in range(TT)]
                o0 = [builder.add(builder.mul(builder.add(builder.mul(toks[j], nS), S), c(64)), c(v * W))
                      for j in range(TT)]
                # the row's quant bytes once per vector; then step by step (k outer), so that only one step's
                # activations and scales are live at a time (k inner kept all TT x 4 activation vectors live
                # across the rows: spills; 3x3 tile, 512 tokens, 1 thread, same run: 82-84 -> 100 GOP/s)
                AB, s0 = [], []
                for i in range(RT):
                    rsb = builder.add(builder.mul(rows[i], nS), S)  # the row's super-block S
                    q0 = builder.add(builder.mul(rsb, c(192)), c(v * 3 * W))
                    s0.append(builder.add(builder.mul(rsb, c(16)), c(v * n32)))
                    AB.append([A.vec(builder, QV, builder.add(q0, c(m * W)), I8, W) for m in range(3)])
                for k in range(4):
                    xq = [A.vec(builder, XQ, builder.add(x0[j], c(k * W)), I8, W) for j in range(TT)]
                    xo = [A.vec(builder, XO, builder.add(o0[j], c(k * n32)), I32, n32) for j in range(TT)]
                    for i in range(RT):
                        Av, Bv, Hv = AB[i]
                        if k == 0:
                            q = builder.or_(builder.and_(Av, k8(15)), builder.shl(builder.and_(Hv, k8(3)), k8(4)))
                        elif k == 1:
                            q = builder.or_(builder.and_(Bv, k8(15)), builder.shl(builder.and_(Hv, k8(12)), k8(2)))
                        elif k == 2:
                            q = builder.or_(builder.lshr(Av, k8(4)), builder.and_(Hv, k8(48)))
                        else:
                            q = builder.or_(builder.lshr(Bv, k8(4)), builder.lshr(builder.and_(Hv, k8(192)), k8(2)))
                        sv = A.vec(builder, SC, builder.add(s0[i], c(k * W // 16)), I8, n32 // 4)
                        sv = builder.sext(builder.shuffle_vector(sv, ir.Constant(_vt(I8, n32 // 4), None), rep4), vi32)
                        for j in range(TT):
                            a = ir_dot_u8s8(builder, level, xo[j], q, xq[j])
                            isum[i][j] = builder.add(isum[i][j], builder.mul(a, sv))
            for i in range(RT):
                dw = f16(i, S)
                for j in range(TT):
                    dx = builder.load(builder.gep(A.data[XD], [builder.add(builder.mul(toks[j], nS), S)]))
                    sc = builder.fmul(dw, dx, flags=FAST)
                    spl = builder.shuffle_vector(builder.insert_element(ir.Constant(vf32, None), sc, ir.Constant(
                        I32, 0)), ir.Constant(vf32, None), ir.Constant(_vt(I32, n32), [0] * n32))
                    p = builder.fmul(builder.sitofp(isum[i][j], vf32), spl, flags=FAST)
                    builder.store(builder.fadd(p, builder.load(facc[i][j]), flags=FAST), facc[i][j])
        _store(builder, A.data[Y], facc, r0, rs, t0, n_out, n_tok, RT, TT)
        return context.get_dummy_value()

    return cg


def _store(builder, ydata, facc, r0, rs, t0, n_out, n_tok, RT, TT):
    """y[t, r] = hsum(facc[i][j]) for the tile's valid (row, token) pairs."""
    for i in range(RT):
        ri = builder.add(r0, builder.mul(rs, ir.Constant(I64, i)))
        for j in range(TT):
            tj = builder.add(t0, ir.Constant(I64, j))
            ok = builder.and_(builder.icmp_signed("<", ri, n_out), builder.icmp_signed("<", tj, n_tok))
            with builder.if_then(ok):
                s = ir_hsum_f32(builder, builder.load(facc[i][j]))
                builder.store(s, builder.gep(ydata, [builder.add(builder.mul(tj, n_out), ri)]))


def _c2(*arrs):
    return all(isinstance(a, types.Array) and a.layout == "C" and a.ndim == 2 for a in arrs)


@intrinsic
def _tile_q4_0(typingctx, isa, tl, qs, d, xlo, xhi, xd, xo, y, r0, rs, t0, t_end):
    level = _level(isa)
    if not _c2(qs, d, xlo, xhi, xd, xo, y):
        return None
    RT, TT = _shape(tl)
    return types.void(isa, tl, qs, d, xlo, xhi, xd, xo, y, types.int64, types.int64, types.int64, types.int64), \
        _tile_codegen(level, 4, True, RT, TT)


@intrinsic
def _tile_q8_0(typingctx, isa, tl, qs, d, xq, xd, xo, y, r0, rs, t0, t_end):
    level = _level(isa)
    if not _c2(qs, d, xq, xd, xo, y):
        return None
    RT, TT = _shape(tl)
    return (types.void(isa, tl, qs, d, xq, xd, xo, y, types.int64, types.int64, types.int64, types.int64),
            _tile_codegen(level, 8, False, RT, TT))


@intrinsic
def _tile_q4_k(typingctx, isa, tl, qs, sl, sh, ml, mh, d, dmin, xa, xb, bl, bh, xd, y, r0, rs, t0, t_end):
    level = _level(isa)
    if not _c2(qs, sl, sh, ml, mh, d, dmin, xa, xb, bl, bh, xd, y):
        return None
    RT, TT = _shape(tl)
    return (types.void(isa, tl, qs, sl, sh, ml, mh, d, dmin, xa, xb, bl, bh, xd, y, types.int64, types.int64,
                       types.int64, types.int64), _q4_k_codegen(level, RT, TT))


@intrinsic
def _tile_q6_k(typingctx, isa, tl, qv, sc, d, xq, xo, xd, y, r0, rs, t0, t_end):
    level = _level(isa)
    if not _c2(qv, sc, d, xq, xo, xd, y):
        return None
    RT, TT = _shape(tl)
    return types.void(isa, tl, qv, sc, d, xq, xo, xd, y, types.int64, types.int64, types.int64, types.int64), \
        _q6_k_codegen(level, RT, TT)


@intrinsic
def tile_shape(typingctx, tl):
    """(rows, tokens, spread) of a Tile token, as compile-time constants."""
    RT, TT = _shape(tl)

    def cg(context, builder, sig, args):
        return context.make_tuple(builder, sig.return_type, [ir.Constant(I64, v) for v in (RT, TT, int(tl.spread))])

    return types.UniTuple(types.int64, 3)(tl), cg


@nb.njit(**JIT)
def _token_block(xbytes, TT):
    """Tokens per outer block: BLOCK_BYTES of activations (xbytes a token), whole tiles, at least one tile."""
    return max(TT, BLOCK_BYTES // max(xbytes, 1) // TT * TT)


@nb.njit(**PJIT)
def gemm_q4_0(isa, tl, qs, d, xlo, xhi, xd, xo, y):
    """y (n_tok, n_out) = W @ x; the arguments of legacy_simd.mv_q4_0."""
    n_tok, n_out = y.shape
    RT, TT, SP = tile_shape(tl)
    nrt = (n_out + RT - 1) // RT
    RS0, RS1 = (1, nrt) if SP else (RT, 1)  # tile rt's rows: rt * RS0 + i * RS1
    TB = _token_block(2 * xlo.shape[1], TT)
    for tb in range(0, n_tok, TB):
        te = min(n_tok, tb + TB)
        for rt in nb.prange(nrt):
            for t0 in range(tb, te, TT):
                _tile_q4_0(isa, tl, qs, d, xlo, xhi, xd, xo, y, rt * RS0, RS1, t0, te)


@nb.njit(**PJIT)
def gemm_q8_0(isa, tl, qs, d, xq, xd, xo, y):
    """y (n_tok, n_out) = W @ x; the arguments of legacy_simd.mv_q8_0."""
    n_tok, n_out = y.shape
    RT, TT, SP = tile_shape(tl)
    nrt = (n_out + RT - 1) // RT
    RS0, RS1 = (1, nrt) if SP else (RT, 1)  # tile rt's rows: rt * RS0 + i * RS1
    TB = _token_block(xq.shape[1], TT)
    for tb in range(0, n_tok, TB):
        te = min(n_tok, tb + TB)
        for rt in nb.prange(nrt):
            for t0 in range(tb, te, TT):
                _tile_q8_0(isa, tl, qs, d, xq, xd, xo, y, rt * RS0, RS1, t0, te)


@nb.njit(**PJIT)
def gemm_q4_k(isa, tl, qs, sl, sh, ml, mh, d, dmin, xa, xb, bl, bh, xd, y):
    """y (n_tok, n_out) = W @ x; the arguments of kquants_simd.mv_q4_k."""
    n_tok, n_out = y.shape
    RT, TT, SP = tile_shape(tl)
    nrt = (n_out + RT - 1) // RT
    RS0, RS1 = (1, nrt) if SP else (RT, 1)  # tile rt's rows: rt * RS0 + i * RS1
    TB = _token_block(2 * xa.shape[1], TT)
    for tb in range(0, n_tok, TB):
        te = min(n_tok, tb + TB)
        for rt in nb.prange(nrt):
            for t0 in range(tb, te, TT):
                _tile_q4_k(isa, tl, qs, sl, sh, ml, mh, d, dmin, xa, xb, bl, bh, xd, y, rt * RS0, RS1, t0, te)


@nb.njit(**PJIT)
def gemm_q6_k(isa, tl, qv, sc, d, xq, xo, xd, y):
    """y (n_tok, n_out) = W @ x; the arguments of kquants_simd.mv_q6_k."""
    n_tok, n_out = y.shape
    RT, TT, SP = tile_shape(tl)
    nrt = (n_out + RT - 1) // RT
    RS0, RS1 = (1, nrt) if SP else (RT, 1)  # tile rt's rows: rt * RS0 + i * RS1
    TB = _token_block(xq.shape[1], TT)
    for tb in range(0, n_tok, TB):
        te = min(n_tok, tb + TB)
        for rt in nb.prange(nrt):
            for t0 in range(tb, te, TT):
                _tile_q6_k(isa, tl, qv, sc, d, xq, xo, xd, y, rt * RS0, RS1, t0, te)


GEMM = {Q4_0: gemm_q4_0, Q8_0: gemm_q8_0, Q4_K: gemm_q4_k, Q6_K: gemm_q6_k}
