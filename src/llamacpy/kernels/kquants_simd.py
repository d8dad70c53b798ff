"""Decode kernels for the k-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) on the SIMD layer (simd.py), one source for
every level.

Owns: `repack_rows(typ, raw, n_out, n_in, level)`, `prep(typ, level, qx, d, bsums)` (`activations(typ, level, x)`:
the same from f32 x, quantized in the same call), `mv_q2_k` .. `mv_q6_k(isa, ...)`. Q5_K extends the Q4_K layout
below; Q6_K's, Q3_K's and Q2_K's layouts are described above their kernels.

Q4_K layout: one int32 lane per 64-weight chunk (ggml's Q4_K: chunk c of a super-block is 32 bytes, low nibbles =
weights 64c..64c+31 = sub-block 2c, high nibbles = the next 32 = sub-block 2c+1). With n32 = width/4 lanes,
the chunks of a row go in groups of n32; vector step s (0..7) holds bytes 4s..4s+3 of each chunk side by side
(as legacy_simd.py does for blocks). After the 8 steps lane k holds the two sub-blocks' q*x sums of chunk k
(low and high nibbles in two vectors); times the sub-block scales (int32 multiply), minus the mins times the
activations' sums (Q8_K bsums), one int->f32 conversion and per-super-block f32 scaling per vector.
Rows are whole, in file order, padded to a multiple of n32 chunks with zero chunks (zero scales).
    qs (n_out, nch*32) uint8; sl, sh, ml, mh (n_out, nch) uint8 -- 6-bit scale / min of sub-block 2c and 2c+1;
    d, dmin (n_out, nch/4) uint16 (f16 bits per super-block)
Arithmetic as llama.cpp's vec_dot_q4_K_q8_K: integer sums per sub-block times the integer scales,
d * dx * sum(sc * isum) - dmin * dx * sum(m * bsum), with the f32 parts per chunk instead of per super-block
(products of at most 63 * 60960 * 2 < 2**24: exact in f32).
Must not: define the activation quantization (q8.py's, called as is) or choose paths/levels (linear.py, isa.py).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .common import JIT, PJIT, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, f16_bits_to_f32
from .kquants import _scale_min_k4
from .q8 import _q8_k
from .simd import (I8, I32, WIDTH, Vec, _c_array, _level, _ptr, _vt, dot_u8s8, vand, vcvt, vfma, vload_f16_x4, vload_f32, vload_i8, vload_i32, vload_u8_i32,
                   vload_i8_i32_x4, vmul, vmul_i32, vadd, vor, vshl, vshr, vshr4, vsplat_f32, vsub, vzero_f32,
                   vzero_i32, vhsum, width)

TYPES = (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
LAYOUT_VERSION = 2  # 2: Q6_K one int32 lane per sub-block


def _nchp(n_in: int, level: str) -> int:
    n32 = WIDTH[level] // 4
    return -(-(n_in // 64) // n32) * n32


@nb.njit(parallel=True, cache=True, nogil=True)
def _interleave(qsrc, sc, mn, dsrc, n32, qs, sl, sh, ml, mh, d, dmin):
    """qsrc (n_out, nch, 32) chunk bytes, sc/mn (n_out, nch*2) u8, dsrc (n_out, nS, 2) f16 bits (d, dmin)."""
    n_out, nch, _ = qsrc.shape
    nchp = sl.shape[1]
    for r in nb.prange(n_out):
        for c in range(nchp):
            g, k = c // n32, c % n32
            real = c < nch
            for j in range(32):
                qs[r, g * 32 * n32 + (j // 4) * 4 * n32 + 4 * k + j % 4] = qsrc[r, c, j] if real else 0
            sl[r, c] = sc[r, 2 * c] if real else 0
            sh[r, c] = sc[r, 2 * c + 1] if real else 0
            ml[r, c] = mn[r, 2 * c] if real else 0
            mh[r, c] = mn[r, 2 * c + 1] if real else 0
        for S in range(nchp // 4):
            d[r, S] = dsrc[r, S, 0] if S < nch // 4 else 0
            dmin[r, S] = dsrc[r, S, 1] if S < nch // 4 else 0


def repack_rows(typ: int, raw: np.ndarray, n_out: int, n_in: int, level: str) -> tuple:
    if typ == Q6_K:
        return _repack_q6(raw, n_out, n_in, level)
    if typ in (Q3_K, Q2_K):
        return _repack_q23(typ, raw, n_out, n_in, level)
    nS = n_in // 256
    blk = np.asarray(raw).reshape(n_out, nS, 144 if typ == Q4_K else 176)
    qo = 16 if typ == Q4_K else 48  # Q5_K: d, dmin, scales, qh[32], qs[128]
    sc, mn = _scale_min_k4(blk[:, :, 4:16])  # (n_out, nS, 8)
    nchp = _nchp(n_in, level)
    qs = np.empty((n_out, nchp * 32), np.uint8)
    sl, sh, ml, mh = (np.empty((n_out, nchp), np.uint8) for _ in range(4))
    d = np.empty((n_out, nchp // 4), np.uint16)
    dmin = np.empty((n_out, nchp // 4), np.uint16)
    dsrc = np.ascontiguousarray(blk[:, :, 0:4]).view(np.uint16)  # (n_out, nS, 2)
    _interleave(blk[:, :, qo:qo + 128].reshape(n_out, nS * 4, 32), np.ascontiguousarray(sc).reshape(n_out, -1),
                np.ascontiguousarray(mn).reshape(n_out, -1), dsrc, WIDTH[level] // 4, qs, sl, sh, ml, mh, d, dmin)
    if typ == Q5_K:
        qh = np.empty((n_out, nchp * 8), np.uint8)
        _interleave_q5h(np.ascontiguousarray(blk[:, :, 16:48]), WIDTH[level] // 4, qh)
        return qs, qh, sl, sh, ml, mh, d, dmin
    return qs, sl, sh, ml, mh, d, dmin


@nb.njit(**JIT)
def _prep(qx, dq, bsums, nchp, n32):
    """Q4_K / Q5_K activations: the bytes of chunk c's two halves in the lane layout (whole 4-byte words move,
    as in legacy_simd._prep), the bsums of each half, the chunk's Q8_K scale."""
    n_tok, n_in = qx.shape
    nch = n_in // 64
    xa = np.zeros((n_tok, nchp * 32), np.int8)
    xb = np.zeros((n_tok, nchp * 32), np.int8)
    bl = np.zeros((n_tok, nchp), np.int32)
    bh = np.zeros((n_tok, nchp), np.int32)
    xd = np.zeros((n_tok, nchp), np.float32)
    for t in range(n_tok):
        src = qx[t].view(np.int32)  # (n_in / 4,)
        wa = xa[t].view(np.int32)
        wb = xb[t].view(np.int32)
        for c in range(nch):
            g, k = c // n32, c % n32
            o = g * 8 * n32 + k
            for w in range(8):
                wa[o + w * n32] = src[c * 16 + w]
                wb[o + w * n32] = src[c * 16 + 8 + w]
            bl[t, c] = bsums[t, 4 * c] + bsums[t, 4 * c + 1]
            bh[t, c] = bsums[t, 4 * c + 2] + bsums[t, 4 * c + 3]
            xd[t, c] = dq[t, c // 4]
    return xa, xb, bl, bh, xd


def _pick_q23(typ: int, xq, xo, bs, xd4) -> tuple:
    """Of _prep_q23's arrays, the ones MV[typ] takes: Q3_K the offsets, Q2_K the block sums."""
    return (xq, xo, xd4) if typ == Q3_K else (xq, bs, xd4)


def prep(typ: int, level: str, qx: np.ndarray, dq: np.ndarray, bsums: np.ndarray) -> tuple:
    """Q8_K activations (qx (n, n_in) int8, d (n, n_in/256) f32, bsums (n, n_in/16)) -> the kernel's arrays."""
    if typ == Q6_K:
        return _prep_q6(qx, dq, bsums, WIDTH[level])
    if typ in (Q3_K, Q2_K):
        return _pick_q23(typ, *_prep_q23(qx, dq, bsums, WIDTH[level]))
    return _prep(qx, dq, bsums, _nchp(qx.shape[1], level), WIDTH[level] // 4)


@nb.njit(cache=True, nogil=True)  # no fastmath: _q8_k's rounding stays IEEE (compiled by its own flags anyway)
def _quant_prep(x, nchp, n32):
    qx, dq, bsums = _q8_k(x)
    return _prep(qx, dq, bsums, nchp, n32)


@nb.njit(cache=True, nogil=True)
def _quant_prep_q6(x, W):
    qx, dq, bsums = _q8_k(x)
    return _prep_q6(qx, dq, bsums, W)


@nb.njit(cache=True, nogil=True)
def _quant_prep_q23(x, W):
    qx, dq, bsums = _q8_k(x)
    return _prep_q23(qx, dq, bsums, W)


def activations(typ: int, level: str, x: np.ndarray) -> tuple:
    """prep(typ, level, *q8.quantize_q8_k(x)) -- the same arrays bit for bit -- in one compiled call (the decode
    path's: one dispatch and no intermediate arrays handed through Python). x: (n, n_in) f32 C-contiguous."""
    if typ == Q6_K:
        return _quant_prep_q6(x, WIDTH[level])
    if typ in (Q3_K, Q2_K):
        return _pick_q23(typ, *_quant_prep_q23(x, WIDTH[level]))
    return _quant_prep(x, _nchp(x.shape[1], level), WIDTH[level] // 4)


@nb.njit(**PJIT)
def mv_q4_k(isa, qs, sl, sh, ml, mh, d, dmin, xa, xb, bl, bh, xd, y):
    """y (n_tok, n_out) = W @ x; arrays as repack_rows / prep make them."""
    H = qs.shape[1]
    nchp = sl.shape[1]
    nSp = d.shape[1]
    n_tok, n_out = y.shape
    W = width(isa)
    n32 = W // 4
    for r in nb.prange(n_out):
        for t in range(n_tok):
            acc = vzero_f32(isa)
            for g in range(nchp // n32):
                q0 = r * H + g * 8 * W
                x0 = t * H + g * 8 * W
                lo = vzero_i32(isa)
                hi = vzero_i32(isa)
                for s in range(8):
                    w = vload_i8(isa, qs, q0 + s * W)
                    lo = dot_u8s8(isa, lo, vand(w, 15), vload_i8(isa, xa, x0 + s * W))
                    hi = dot_u8s8(isa, hi, vshr4(w), vload_i8(isa, xb, x0 + s * W))
                c0 = g * n32
                i0 = r * nchp + c0
                j0 = t * nchp + c0
                isum = vadd(vmul_i32(vload_u8_i32(isa, sl, i0), lo), vmul_i32(vload_u8_i32(isa, sh, i0), hi))
                msum = vadd(vmul_i32(vload_u8_i32(isa, ml, i0), vload_i32(isa, bl, j0)),
                            vmul_i32(vload_u8_i32(isa, mh, i0), vload_i32(isa, bh, j0)))
                S0 = r * nSp + c0 // 4
                v = vsub(vmul(vcvt(isum), vload_f16_x4(isa, d, S0)), vmul(vcvt(msum), vload_f16_x4(isa, dmin, S0)))
                acc = vfma(v, vload_f32(isa, xd, j0), acc)
            y[t, r] = vhsum(acc)


# -- Q6_K ------------------------------------------------------------------------------------------------------
# ggml's Q6_K weight w = 128n + 32j + l of a super-block (n = 0..1, j = 0..3, l = 0..31): the low 4 bits are the
# low (j = 0, 1) or high (j = 2, 3) nibble of ql[64n + 32 (j % 2) + l], bits 4..5 are qh[32n + l] bits 2j..2j+1;
# value q - 32 (q = 0..63), sub-block w // 16 with int8 scale scales[w // 16].
# Here one int32 lane is one sub-block (as Q3_K / Q2_K): with n = width/4 lanes, super-blocks go in groups of
# G = width/16 (4 at width 64, 2 at 32, 1 at 16); a group is 4 vectors c whose lane j is sub-block 4c + j % 4 of
# the group's super-block j // 4. The last nS % G super-blocks (the tail: no padding, the bytes stay the file's)
# are 64/width vectors each, lane j of vector c = sub-block c*n + j. Byte i of a lane at step k (0..3) is weight
# 4k + i of its sub-block, so the activations of a step are whole 4-byte words of x. A vector is 3 byte vectors
# B0, B1, B2 of width bytes: B_m = q(step m) | ((q(step 3) >> 2m) & 3) << 6 -- steps 0..2 are B_m & 63 (one
# AND), step 3 the three top bit pairs gathered by _q6_top (6 ops); 192 bytes per super-block, the file's 192
# quant bytes reordered. After the 4 steps (dots starting at -32 * bsum of the lane's sub-block: the -32 offset)
# each lane holds its sub-block's whole sum: ONE multiply by the sign-extended int8 scales (stored in lane order)
# per vector, and the f32 part once per group (tail: per super-block): acc = fma(cvt(isum) * d_w, d_x, acc), d_w /
# d_x of each lane's super-block (vcvtph2ps of the f16 repeated 4 times; tail: splats), see _ir_q6_f32.
# |lane| <= 32 * 128 * 16 * 128 = 2**23 per vector, at most 4 per lane and group: the int32 sums are exact.
#     qv (n_out, nS*192) uint8; sc (n_out, nS*16) int8 (lane order); d (n_out, nS) uint16 (f16 bits)
#     -- 210 bytes per super-block, as the file
# Activations (prep): xq (n, nS*256) int8 (words in the lane order above), xo (n, nS*16) int32 = -32 * bsums
# (lane order), xd4 (n, nS*4) f32 = each super-block's Q8_K d repeated 4 times.


def _ir_q6_top(builder, b0, b1, b2):
    """IR of step 3's 6-bit values from B0, B1, B2 (<width x i8>): ((((B0 & 0xC0) >> 2 | B1 & 0xC0) >> 2 |
    B2 & 0xC0) >> 2, the shifts done on 16-bit lanes (one instruction on x86: the bits shifted across a byte
    boundary are zero, masked before)."""
    n8 = b0.type.count
    v8, v16 = ir.VectorType(I8, n8), ir.VectorType(ir.IntType(16), n8 // 2)
    m = ir.Constant(v8, [0xC0] * n8)
    two = ir.Constant(v16, [2] * (n8 // 2))
    sh = lambda v: builder.bitcast(builder.lshr(builder.bitcast(v, v16), two), v8)
    t = sh(builder.and_(b0, m))
    t = sh(builder.or_(t, builder.and_(b1, m)))
    return sh(builder.or_(t, builder.and_(b2, m)))


@intrinsic
def _q6_top(typingctx, b0, b1, b2):
    if not (isinstance(b0, Vec) and b0.elem == types.int8 and b0 == b1 == b2):
        return None

    def cg(context, builder, sig, args):
        return _ir_q6_top(builder, *args)

    return b0(b0, b1, b2), cg


def _ir_q6_f32(builder, isum, dw, dx, acc):
    """IR of acc + cvt(isum) * dw * dx in exactly this association: flag `contract` only (one FMA where the level
    has it), never reassociated -- with fast-math flags LLVM picked (cvt * dw) * dx in one context and
    cvt * (dw * dx) in another, and the GEMM differed from mv_q6_k in the last bit."""
    C = ("contract",)
    f = builder.fmul(builder.sitofp(isum, ir.VectorType(ir.FloatType(), isum.type.count)), dw, flags=C)
    return builder.fadd(builder.fmul(f, dx, flags=C), acc, flags=C)


@intrinsic
def _q6_f32(typingctx, isum, dw, dx, acc):
    if not (isinstance(isum, Vec) and isum.elem == types.int32 and isinstance(acc, Vec) and acc == dw == dx
            and acc.elem == types.float32 and acc.n == isum.n):
        return None

    def cg(context, builder, sig, args):
        return _ir_q6_f32(builder, *args)

    return acc(isum, dw, dx, acc), cg


@nb.njit(cache=True)
def _q6_lane(W, nS, L):
    """Lane L of a row's lanes -> (super-block, sub-block) it holds (layout above)."""
    G, n = W // 16, W // 4
    nG = nS // G
    if L < nG * G * 16:
        vi, j = L // n, L % n
        return (vi // 4) * G + j // 4, 4 * (vi % 4) + j % 4
    return L // 16, L % 16


@nb.njit(parallel=True, cache=True, nogil=True)
def _interleave_q6(blk, W, qv, sc, d):
    """blk (n_out, nS, 210) ggml's Q6_K blocks -> qv, sc, d (layout above)."""
    n_out, nS, _ = blk.shape
    n = W // 4
    for r in nb.prange(n_out):
        q = np.empty((nS, 256), np.uint8)  # the row's 6-bit values in weight order
        for S in range(nS):
            d[r, S] = np.uint16(blk[r, S, 208]) | (np.uint16(blk[r, S, 209]) << np.uint16(8))
            for w in range(256):
                hn, j, l = w // 128, (w % 128) // 32, w % 32
                nib = (np.uint8(blk[r, S, 64 * hn + 32 * (j % 2) + l]) >> np.uint8(4 * (j // 2))) & np.uint8(15)
                hb = (np.uint8(blk[r, S, 128 + 32 * hn + l]) >> np.uint8(2 * j)) & np.uint8(3)
                q[S, w] = nib | (hb << np.uint8(4))
        for L in range(nS * 16):
            S, s = _q6_lane(W, nS, L)
            vi, j = L // n, L % n
            sc[r, L] = np.int8(blk[r, S, 192 + s])
            for i in range(4):
                q3 = q[S, 16 * s + 12 + i]
                for m in range(3):
                    top = ((q3 >> np.uint8(2 * m)) & np.uint8(3)) << np.uint8(6)
                    qv[r, vi * 3 * W + m * W + 4 * j + i] = q[S, 16 * s + 4 * m + i] | top


@nb.njit(**JIT)
def _prep_q6(qx, dq, bsums, W):
    """xq: word k of each lane's sub-block at step k of its vector; xo = -32 * bsums in lane order; xd4."""
    n_tok, n_in = qx.shape
    nS = n_in // 256
    n = W // 4
    xq = np.empty((n_tok, n_in), np.int8)
    xo = np.empty((n_tok, nS * 16), np.int32)
    xd4 = np.empty((n_tok, nS * 4), np.float32)
    for t in range(n_tok):
        src = qx[t].view(np.int32)  # (n_in / 4,)
        dst = xq[t].view(np.int32)
        for L in range(nS * 16):
            S, s = _q6_lane(W, nS, L)
            vi, j = L // n, L % n
            xo[t, L] = -32 * bsums[t, S * 16 + s]
            for k in range(4):
                dst[vi * W + k * n + j] = src[S * 64 + s * 4 + k]
        for S in range(nS):
            for q in range(4):
                xd4[t, S * 4 + q] = dq[t, S]
    return xq, xo, xd4


@nb.njit(**JIT)
def _q6_vec(isa, qv, xq, xo, q0, x0, o0):
    """One vector's sub-block sums (q0: its byte offset in qv, x0 in xq, o0: its first lane in xo)."""
    W = width(isa)
    B0 = vload_i8(isa, qv, q0)
    B1 = vload_i8(isa, qv, q0 + W)
    B2 = vload_i8(isa, qv, q0 + 2 * W)
    a = vload_i32(isa, xo, o0)
    a = dot_u8s8(isa, a, _q6_top(B0, B1, B2), vload_i8(isa, xq, x0 + 3 * W))
    a = dot_u8s8(isa, a, vand(B0, 63), vload_i8(isa, xq, x0))
    a = dot_u8s8(isa, a, vand(B1, 63), vload_i8(isa, xq, x0 + W))
    a = dot_u8s8(isa, a, vand(B2, 63), vload_i8(isa, xq, x0 + 2 * W))
    return a


@nb.njit(**PJIT)
def mv_q6_k(isa, qv, sc, d, xq, xo, xd4, y):
    n_tok, n_out = y.shape
    nS = d.shape[1]
    W = width(isa)
    n = W // 4
    G = W // 16
    nG = nS // G
    for r in nb.prange(n_out):
        for t in range(n_tok):
            acc = vzero_f32(isa)
            for g in range(nG):
                isum = vzero_i32(isa)
                for c in range(4):
                    L = (4 * g + c) * n  # the vector's first lane
                    a = _q6_vec(isa, qv, xq, xo, (r * nS * 16 + L) * 12, (t * nS * 16 + L) * 16, t * nS * 16 + L)
                    isum = vadd(isum, vmul_i32(a, _vload_s8_i32(isa, sc, r * nS * 16 + L)))
                acc = _q6_f32(isum, vload_f16_x4(isa, d, r * nS + g * G), vload_f32(isa, xd4, t * nS * 4 + g * n), acc)
            for S in range(nG * G, nS):  # the tail
                isum = vzero_i32(isa)
                for c in range(64 // W):
                    L = S * 16 + c * n
                    a = _q6_vec(isa, qv, xq, xo, (r * nS * 16 + L) * 12, (t * nS * 16 + L) * 16, t * nS * 16 + L)
                    isum = vadd(isum, vmul_i32(a, _vload_s8_i32(isa, sc, r * nS * 16 + L)))
                acc = _q6_f32(isum, vsplat_f32(isa, f16_bits_to_f32(d[r, S])), vsplat_f32(isa, xd4[t, S * 4]), acc)
            y[t, r] = vhsum(acc)


def _repack_q6(raw, n_out, n_in, level):
    nS = n_in // 256
    blk = np.asarray(raw).reshape(n_out, nS, 210)
    qv = np.empty((n_out, nS * 192), np.uint8)
    sc = np.empty((n_out, nS * 16), np.int8)
    d = np.empty((n_out, nS), np.uint16)
    _interleave_q6(blk, WIDTH[level], qv, sc, d)
    return qv, sc, d


# -- Q5_K ------------------------------------------------------------------------------------------------------
# The Q4_K layout (qs, sl, sh, ml, mh, d, dmin: the low 4 bits, ggml's Q5_K qs[128]) plus the 5th bits, in the
# same lane order: per chunk group g, two vectors of width bytes (one per 4 steps); byte 4k + b of vector p holds
# the 5th bits of bytes j = 4 (4p + i) + b (i = 0..3) of chunk k of the group: bit 2i for the low nibble (ggml's
# qh[j] bit 2 (c % 4) of super-block c // 4), bit 2i + 1 for the high nibble (bit 2 (c % 4) + 1) -- 1 bit per
# weight, as in the file. The kernel takes bits 0 and 1 to bit 4 (<< 4, << 3) and moves the vector on by 2.
#     qh (n_out, nch*8) uint8 (nch: chunks padded as for Q4_K)
# Sums: q <= 31, 32 terms, |x| <= 128: sc * isum per chunk < 63 * 31 * 128 * 32 * 2 < 2**24 (exact in f32).


@nb.njit(parallel=True, cache=True, nogil=True)
def _interleave_q5h(qhsrc, n32, qh):
    """qhsrc (n_out, nS, 32) ggml's qh bytes -> qh (n_out, nchp*8) as described above."""
    n_out, nS, _ = qhsrc.shape
    W = 4 * n32
    nch = nS * 4
    nchp = qh.shape[1] // 8
    for r in nb.prange(n_out):
        qh[r, :] = 0
        for c in range(min(nch, nchp)):
            g, k = c // n32, c % n32
            S, cc = c // 4, c % 4
            for j in range(32):
                s, b = j // 4, j % 4
                p, i = s // 4, s % 4
                h = np.uint8(qhsrc[r, S, j])
                lo = (h >> np.uint8(2 * cc)) & np.uint8(1)
                hi = (h >> np.uint8(2 * cc + 1)) & np.uint8(1)
                o = g * 2 * W + p * W + 4 * k + b
                qh[r, o] |= np.uint8((lo << np.uint8(2 * i)) | (hi << np.uint8(2 * i + 1)))


@nb.njit(**PJIT)
def mv_q5_k(isa, qs, qh, sl, sh, ml, mh, d, dmin, xa, xb, bl, bh, xd, y):
    """y (n_tok, n_out) = W @ x; Q4_K's arithmetic with 5-bit q (activations as prep makes them for Q4_K)."""
    H = qs.shape[1]
    HH = qh.shape[1]
    nchp = sl.shape[1]
    nSp = d.shape[1]
    n_tok, n_out = y.shape
    W = width(isa)
    n32 = W // 4
    for r in nb.prange(n_out):
        for t in range(n_tok):
            acc = vzero_f32(isa)
            for g in range(nchp // n32):
                q0 = r * H + g * 8 * W
                h0 = r * HH + g * 2 * W
                x0 = t * H + g * 8 * W
                lo = vzero_i32(isa)
                hi = vzero_i32(isa)
                for p in range(2):
                    hb = vload_i8(isa, qh, h0 + p * W)
                    for i in range(4):
                        s = 4 * p + i
                        w = vload_i8(isa, qs, q0 + s * W)
                        lo = dot_u8s8(isa, lo, vor(vand(w, 15), vand(vshl(hb, 4), 16)), vload_i8(isa, xa, x0 + s * W))
                        hi = dot_u8s8(isa, hi, vor(vshr4(w), vand(vshl(hb, 3), 16)), vload_i8(isa, xb, x0 + s * W))
                        hb = vshr(hb, 2)
                c0 = g * n32
                i0 = r * nchp + c0
                j0 = t * nchp + c0
                isum = vadd(vmul_i32(vload_u8_i32(isa, sl, i0), lo), vmul_i32(vload_u8_i32(isa, sh, i0), hi))
                msum = vadd(vmul_i32(vload_u8_i32(isa, ml, i0), vload_i32(isa, bl, j0)),
                            vmul_i32(vload_u8_i32(isa, mh, i0), vload_i32(isa, bh, j0)))
                S0 = r * nSp + c0 // 4
                v = vsub(vmul(vcvt(isum), vload_f16_x4(isa, d, S0)), vmul(vcvt(msum), vload_f16_x4(isa, dmin, S0)))
                acc = vfma(v, vload_f32(isa, xd, j0), acc)
            y[t, r] = vhsum(acc)


# -- Q3_K and Q2_K ---------------------------------------------------------------------------------------------
# ggml's Q3_K / Q2_K weight w = 128n + 32k + l of a super-block (n = 0..1, k = 0..3, l = 0..31) has its 2 low
# bits at bits 2k..2k+1 of qs[32n + l] and sits in sub-block w // 16; Q3_K's 3rd bit is hmask[l] bit 4n + k
# (u = q2 | bit << 2 in 0..7, ggml's q = u - 4).
# Here one int32 lane is one sub-block: its 4 bytes hold the sub-block's weights 4i + k (byte i, bits 2k..2k+1).
# Super-blocks go in groups of G = width/16 (4 at width 64, 2 at 32, 1 at 16; rows padded with zero super-blocks
# to whole groups); a group is 4 quant vectors c = 0..3 whose lane j is sub-block 4c + j % 4 of the group's
# super-block j // 4. Step k of a vector takes bits 2k..2k+1 of every byte and dots them with the matching
# activations (prep), so after the 4 steps each lane holds its sub-block's whole sum: one multiply by the
# sub-block scales (stored in lane order, one byte per lane) per vector, and the f32 part once per group (the
# f16 super-block scales repeated over their 4 lanes, vcvtph2ps).
# Q3_K: the 3rd bits, one vector per two quant vectors (c = 2m, 2m+1): byte p holds the 4 bits of vector 2m's
#   byte p (bit k: step k) in its low nibble, 2m+1's in its high nibble -- 1 bit per weight, as in the file.
#   The -4 offset: each lane starts at -4 * bsum of its sub-block. |lane| <= (16*7*128 + 4*2048) * 32 < 2**20,
#   4 per lane a group: exact in f32.
#     qv (n_out, nSp*64) uint8; hv (n_out, nSp*32) uint8; sc (n_out, nSp*16) int8 (6-bit scale - 32, lane
#     order); d (n_out, nSp) uint16 -- 114 bytes per super-block (the file's 110 + 4 for unpacked scales)
# Q2_K: scm (n_out, nSp*16) uint8, ggml's own scale | min << 4 bytes in lane order: scales from the low nibbles,
#   the min sum sum(m * bsum) from the high nibbles against the Q8_K bsums in lane order (prep permutes them).
#     qv (n_out, nSp*64) uint8; scm (n_out, nSp*16) uint8; d, dmin (n_out, nSp) uint16 -- 84 bytes, as the file


def _lane_loader(shift, signed):
    def impl(typingctx, isa, a, i):
        n = WIDTH[_level(isa)] // 4
        if not (_c_array(a) and isinstance(i, types.Integer)):
            return None

        def cg(context, builder, sig, args):
            v = builder.load(_ptr(context, builder, sig.args[1], args[1], args[2], _vt(I8, n)), align=1)
            if signed:
                return builder.sext(v, _vt(I32, n))
            v = builder.zext(v, _vt(I32, n))
            if shift:
                v = builder.lshr(v, ir.Constant(_vt(I32, n), [shift] * n))
            return builder.and_(v, ir.Constant(_vt(I32, n), [15] * n))

        return Vec(types.int32, n)(isa, a, i), cg

    return impl


# width/4 bytes at flat index i as int32 lanes: low nibbles, high nibbles, sign-extended (local to Q2_K / Q3_K)
_vload_lo4 = intrinsic(_lane_loader(0, False))
_vload_hi4 = intrinsic(_lane_loader(4, False))
_vload_s8_i32 = intrinsic(_lane_loader(0, True))


@nb.njit(cache=True)
def _lane(W, L):
    """Lane L of a row's lanes (vector L // (W/4), lane L % (W/4)) -> (super-block, sub-block) it holds."""
    G, n = W // 16, W // 4
    vi, j = L // n, L % n
    return (vi // 4) * G + j // 4, 4 * (vi % 4) + j % 4


@nb.njit(parallel=True, cache=True, nogil=True)
def _regroup_q23(qs, hm, W, qv, hv, sc_in, sc_out):
    """qs (n_out, nS, 64), hm (n_out, nS, 32) ggml's bytes (hm unused when hv has no columns), sc_in (n_out, nS,
    16) per-sub-block scale bytes -> qv, hv, sc_out (layout above; padding super-blocks zero)."""
    n_out, nS, _ = qs.shape
    nL = qv.shape[1] // 4
    n = W // 4
    q3 = hv.shape[1] > 0
    for r in nb.prange(n_out):
        if q3:
            hv[r, :] = 0
        for L in range(nL):
            S, s = _lane(W, L)
            vi, j = L // n, L % n
            sc_out[r, L] = sc_in[r, S, s] if S < nS else 0
            for i in range(4):
                byte = np.uint8(0)
                nib = np.uint8(0)
                if S < nS:
                    for k in range(4):
                        w = 16 * s + 4 * i + k
                        nn, kk, l = w // 128, (w % 128) // 32, w % 32
                        byte |= ((np.uint8(qs[r, S, 32 * nn + l]) >> np.uint8(2 * kk)) & np.uint8(3)) << np.uint8(2 * k)
                        if q3:
                            nib |= ((np.uint8(hm[r, S, l]) >> np.uint8(4 * nn + kk)) & np.uint8(1)) << np.uint8(k)
                p = 4 * j + i
                qv[r, vi * W + p] = byte
                if q3:
                    hv[r, ((vi // 4) * 2 + (vi % 4) // 2) * W + p] |= np.uint8(nib << np.uint8(4 * (vi % 2)))


def _q3_scales(s: np.ndarray) -> np.ndarray:
    """ggml's 12 packed Q3_K scale bytes (n_out, nS, 12) -> signed scales (n_out, nS, 16) int8 (6-bit - 32)."""
    lo = np.concatenate([s[..., 0:8] & 15, s[..., 0:8] >> 4], axis=-1)
    hi = np.concatenate([(s[..., 8:12] >> (2 * k)) & 3 for k in range(4)], axis=-1)
    return ((lo | (hi << 4)).astype(np.int16) - 32).astype(np.int8)


def _repack_q23(typ, raw, n_out, n_in, level):
    W = WIDTH[level]
    G = W // 16
    nS = n_in // 256
    nSp = -(-nS // G) * G
    blk = np.asarray(raw).reshape(n_out, nS, 110 if typ == Q3_K else 84)
    qv = np.empty((n_out, nSp * 64), np.uint8)
    sc = np.empty((n_out, nSp * 16), np.int8 if typ == Q3_K else np.uint8)
    d = np.zeros((n_out, nSp), np.uint16)
    if typ == Q3_K:
        hv = np.empty((n_out, nSp * 32), np.uint8)
        _regroup_q23(np.ascontiguousarray(blk[:, :, 32:96]), np.ascontiguousarray(blk[:, :, 0:32]), W, qv, hv,
                     _q3_scales(blk[:, :, 96:108]), sc)
        d[:, :nS] = np.ascontiguousarray(blk[:, :, 108:110]).view(np.uint16).reshape(n_out, nS)
        return qv, hv, sc, d
    _regroup_q23(np.ascontiguousarray(blk[:, :, 16:80]), np.zeros((n_out, nS, 32), np.uint8), W, qv,
                 np.empty((n_out, 0), np.uint8), np.ascontiguousarray(blk[:, :, 0:16]), sc)
    dd = np.ascontiguousarray(blk[:, :, 80:84]).view(np.uint16).reshape(n_out, nS, 2)
    dmin = np.zeros((n_out, nSp), np.uint16)
    d[:, :nS], dmin[:, :nS] = dd[:, :, 0], dd[:, :, 1]
    return qv, sc, d, dmin


@nb.njit(**JIT)
def _prep_q23(qx, dq, bsums, W):
    """xq: the activation of each byte's k-th weight at step k of its vector; bs: bsums in lane order; xo = -4 bs
    (Q3_K's lane start values); xd4: the Q8_K scale of each lane's super-block (padding: 0)."""
    n_tok, n_in = qx.shape
    nS = n_in // 256
    G = W // 16
    nSp = -(-nS // G) * G
    n = W // 4
    xq = np.zeros((n_tok, nSp * 256), np.int8)
    bs = np.zeros((n_tok, nSp * 16), np.int32)
    xd4 = np.zeros((n_tok, nSp * 4), np.float32)
    for t in range(n_tok):
        for L in range(nSp * 16):
            S, s = _lane(W, L)
            if S >= nS:
                continue
            vi, j = L // n, L % n
            bs[t, L] = bsums[t, S * 16 + s]
            for i in range(4):
                for k in range(4):
                    xq[t, vi * 4 * W + k * W + 4 * j + i] = qx[t, S * 256 + 16 * s + 4 * i + k]
        for S in range(nS):
            for q in range(4):
                xd4[t, S * 4 + q] = dq[t, S]
    return xq, (-4 * bs).astype(np.int32), bs, xd4  # int32: numba widens int * int32 arrays to int64


@nb.njit(**PJIT)
def mv_q3_k(isa, qv, hv, sc, d, xq, xo, xd4, y):
    n_tok, n_out = y.shape
    nSp = d.shape[1]
    W = width(isa)
    n = W // 4
    QR, HR, SR = qv.shape[1], hv.shape[1], sc.shape[1]
    for r in nb.prange(n_out):
        for t in range(n_tok):
            acc = vzero_f32(isa)
            for g in range(nSp // (W // 16)):
                isum = vzero_i32(isa)
                for c in range(4):
                    vi = 4 * g + c
                    q = vload_i8(isa, qv, r * QR + vi * W)
                    h2 = vshl(vshr(vload_i8(isa, hv, r * HR + (2 * g + c // 2) * W), 4 * (c % 2)), 2)
                    x0 = t * QR * 4 + vi * 4 * W
                    a = vload_i32(isa, xo, t * SR + vi * n)
                    for k in range(4):
                        u = vor(vand(vshr(q, 2 * k), 3), vand(vshr(h2, k), 4))
                        a = dot_u8s8(isa, a, u, vload_i8(isa, xq, x0 + k * W))
                    isum = vadd(isum, vmul_i32(a, _vload_s8_i32(isa, sc, r * SR + vi * n)))
                f = vmul(vcvt(isum), vload_f16_x4(isa, d, r * nSp + g * (W // 16)))
                acc = vfma(f, vload_f32(isa, xd4, t * nSp * 4 + g * n), acc)
            y[t, r] = vhsum(acc)


@nb.njit(**PJIT)
def mv_q2_k(isa, qv, scm, d, dmin, xq, bs, xd4, y):
    n_tok, n_out = y.shape
    nSp = d.shape[1]
    W = width(isa)
    n = W // 4
    QR, SR = qv.shape[1], scm.shape[1]
    for r in nb.prange(n_out):
        for t in range(n_tok):
            acc = vzero_f32(isa)
            for g in range(nSp // (W // 16)):
                isum = vzero_i32(isa)
                msum = vzero_i32(isa)
                for c in range(4):
                    vi = 4 * g + c
                    q = vload_i8(isa, qv, r * QR + vi * W)
                    x0 = t * QR * 4 + vi * 4 * W
                    a = vzero_i32(isa)
                    for k in range(4):
                        a = dot_u8s8(isa, a, vand(vshr(q, 2 * k), 3), vload_i8(isa, xq, x0 + k * W))
                    s0 = r * SR + vi * n
                    isum = vadd(isum, vmul_i32(a, _vload_lo4(isa, scm, s0)))
                    msum = vadd(msum, vmul_i32(_vload_hi4(isa, scm, s0), vload_i32(isa, bs, t * SR + vi * n)))
                S0 = r * nSp + g * (W // 16)
                f = vsub(vmul(vcvt(isum), vload_f16_x4(isa, d, S0)), vmul(vcvt(msum), vload_f16_x4(isa, dmin, S0)))
                acc = vfma(f, vload_f32(isa, xd4, t * nSp * 4 + g * n), acc)
            y[t, r] = vhsum(acc)


MV = {Q2_K: mv_q2_k, Q3_K: mv_q3_k, Q4_K: mv_q4_k, Q5_K: mv_q5_k, Q6_K: mv_q6_k}


# Decode from f32 activations: quantize + layout and the kernel in one compiled call (no activation array is
# handed to Python and back; see legacy_simd's MVX) -- the same arrays and kernel as
# MV[typ](isa, *packed, *activations(typ, level, x), y). Arguments: (isa, *packed, x, n32 = width/4, W = width, y).
@nb.njit(cache=True, nogil=True)
def mvx_q4_k(isa, qs, sl, sh, ml, mh, d, dmin, x, n32, W, y):
    xa, xb, bl, bh, xd = _quant_prep(x, sl.shape[1], n32)
    mv_q4_k(isa, qs, sl, sh, ml, mh, d, dmin, xa, xb, bl, bh, xd, y)


@nb.njit(cache=True, nogil=True)
def mvx_q5_k(isa, qs, qh, sl, sh, ml, mh, d, dmin, x, n32, W, y):
    xa, xb, bl, bh, xd = _quant_prep(x, sl.shape[1], n32)
    mv_q5_k(isa, qs, qh, sl, sh, ml, mh, d, dmin, xa, xb, bl, bh, xd, y)


@nb.njit(cache=True, nogil=True)
def mvx_q6_k(isa, qv, sc, d, x, n32, W, y):
    xq, xo, xd4 = _quant_prep_q6(x, W)
    mv_q6_k(isa, qv, sc, d, xq, xo, xd4, y)


@nb.njit(cache=True, nogil=True)
def mvx_q3_k(isa, qv, hv, sc, d, x, n32, W, y):
    xq, xo, _, xd4 = _quant_prep_q23(x, W)
    mv_q3_k(isa, qv, hv, sc, d, xq, xo, xd4, y)


@nb.njit(cache=True, nogil=True)
def mvx_q2_k(isa, qv, scm, d, dmin, x, n32, W, y):
    xq, _, bs, xd4 = _quant_prep_q23(x, W)
    mv_q2_k(isa, qv, scm, d, dmin, xq, bs, xd4, y)


MVX = {Q2_K: mvx_q2_k, Q3_K: mvx_q3_k, Q4_K: mvx_q4_k, Q5_K: mvx_q5_k, Q6_K: mvx_q6_k}


def mvx_args(typ: int, level: str) -> tuple:
    """The (n32, W) that MVX[typ] takes after x at `level`."""
    return WIDTH[level] // 4, WIDTH[level]
