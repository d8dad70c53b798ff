"""Decode kernel for Q4_K on the SIMD layer (simd.py), one source for every level.

Owns: `repack_rows(typ, raw, n_out, n_in, level)`, `prep(typ, level, qx, d, bsums)` and `mv_q4_k(isa, ...)`.

Layout: one int32 lane per 64-weight chunk (ggml's Q4_K: chunk c of a super-block is 32 bytes, low nibbles =
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
Must not: quantize activations (q8.py) or choose paths/levels (linear.py, isa.py).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .common import JIT, PJIT, Q4_K
from .kquants import _scale_min_k4
from .simd import (WIDTH, dot_u8s8, vand, vcvt, vfma, vload_f16_x4, vload_f32, vload_i8, vload_i32, vload_u8_i32,
                   vmul, vmul_i32, vadd, vshr4, vsub, vzero_f32, vzero_i32, vhsum, width)

TYPES = (Q4_K,)
LAYOUT_VERSION = 1


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
    nS = n_in // 256
    blk = np.asarray(raw).reshape(n_out, nS, 144)
    sc, mn = _scale_min_k4(blk[:, :, 4:16])  # (n_out, nS, 8)
    nchp = _nchp(n_in, level)
    qs = np.empty((n_out, nchp * 32), np.uint8)
    sl, sh, ml, mh = (np.empty((n_out, nchp), np.uint8) for _ in range(4))
    d = np.empty((n_out, nchp // 4), np.uint16)
    dmin = np.empty((n_out, nchp // 4), np.uint16)
    dsrc = np.ascontiguousarray(blk[:, :, 0:4]).view(np.uint16)  # (n_out, nS, 2)
    _interleave(blk[:, :, 16:144].reshape(n_out, nS * 4, 32), np.ascontiguousarray(sc).reshape(n_out, -1),
                np.ascontiguousarray(mn).reshape(n_out, -1), dsrc, WIDTH[level] // 4, qs, sl, sh, ml, mh, d, dmin)
    return qs, sl, sh, ml, mh, d, dmin


@nb.njit(**JIT)
def _prep(qx, dq, bsums, nchp, n32):
    n_tok, n_in = qx.shape
    nch = n_in // 64
    xa = np.zeros((n_tok, nchp * 32), np.int8)
    xb = np.zeros((n_tok, nchp * 32), np.int8)
    bl = np.zeros((n_tok, nchp), np.int32)
    bh = np.zeros((n_tok, nchp), np.int32)
    xd = np.zeros((n_tok, nchp), np.float32)
    for t in range(n_tok):
        for c in range(nch):
            g, k = c // n32, c % n32
            for j in range(32):
                o = g * 32 * n32 + (j // 4) * 4 * n32 + 4 * k + j % 4
                xa[t, o] = qx[t, c * 64 + j]
                xb[t, o] = qx[t, c * 64 + 32 + j]
            bl[t, c] = bsums[t, 4 * c] + bsums[t, 4 * c + 1]
            bh[t, c] = bsums[t, 4 * c + 2] + bsums[t, 4 * c + 3]
            xd[t, c] = dq[t, c // 4]
    return xa, xb, bl, bh, xd


def prep(typ: int, level: str, qx: np.ndarray, dq: np.ndarray, bsums: np.ndarray) -> tuple:
    """Q8_K activations (qx (n, n_in) int8, d (n, n_in/256) f32, bsums (n, n_in/16)) -> the kernel's arrays."""
    return _prep(qx, dq, bsums, _nchp(qx.shape[1], level), WIDTH[level] // 4)


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


MV = {Q4_K: mv_q4_k}
