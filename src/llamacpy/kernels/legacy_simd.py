"""Decode kernels for Q4_0 and Q8_0 written on the SIMD layer (simd.py), one source for every level.

Owns: `repack_rows(typ, raw, n_out, n_in)` -> the per-row layout below (level-independent, so one cached copy
serves every level), `prep_<type>(level, qx, dx)` -> the activations arranged to match, and `mv_<type>(isa, ...)`.

Layout (rows kept whole, in file order; nbp = n_in/32 rounded up to PAD[typ] blocks, padding blocks zero):
    Q4_0: qs (n_out, nbp*16) uint8 -- the file's nibble bytes (byte j of a block: weight j low, j+16 high)
          d  (n_out, nbp) uint16 -- f16 bits of the block scales (zero for padding: those blocks add 0)
    Q8_0: qs (n_out, nbp*32) int8, d (n_out, nbp) uint16
Arithmetic (llama.cpp's vec_dot_q4_0_q8_0 / q8_0_q8_0 on Q8_0 activations): per block the exact integer sum
of q*x, times d_w * d_x in f32. One vector step takes width(isa) weight bytes: for Q4_0 the low nibbles against
x[0:16] and the high ones against x[16:32] of each block (prep puts the activations in that order), giving 4
int32 lanes per block; for Q8_0, 8 lanes per block. Offsets are folded into the integer lanes' start values:
Q4_0's (q - 8): -8 * sum(x) / 4 lanes = -2 * sum(x) per lane; VNNI's Q8_0 (q + 128 as u8):
-128 * sum(x) / 8 = -16 * sum(x) per lane. Then lanes -> f32, times the per-lane scale, FMA into f32 lanes;
one horizontal sum per row and token.
Must not: quantize activations (q8.py) or choose paths/levels (linear.py, isa.py).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .common import BLOCK, JIT, PJIT, Q4_0, Q8_0
from .simd import (S8S8_BIAS, dot_s8s8b, dot_u8s8, vand, vcvt, vfma, vhsum, vload_f16_x4, vload_f16_x8,
                   vload_f32, vload_i8, vload_i32, vmul, vshr4, vzero_f32, width)

PAD = {Q4_0: 4, Q8_0: 2}  # blocks per 64 bytes of quants: rows padded so a 64-byte step never runs over
TYPES = (Q4_0, Q8_0)
LAYOUT_VERSION = 1


def _nbp(typ: int, n_in: int) -> int:
    nb_ = n_in // 32
    return -(-nb_ // PAD[typ]) * PAD[typ]


@nb.njit(parallel=True, cache=True, nogil=True)
def _split(blk, qo, qn, qs, d):
    """blk (n_out, nb, bytes) -> qs (n_out, nbp*qn) quant bytes, d (n_out, nbp) f16 bits (zero padding)."""
    n_out, nb_, _ = blk.shape
    nbp = d.shape[1]
    for r in nb.prange(n_out):
        for b in range(nbp):
            if b < nb_:
                d[r, b] = np.uint16(blk[r, b, 0]) | (np.uint16(blk[r, b, 1]) << np.uint16(8))
                for j in range(qn):
                    qs[r, b * qn + j] = blk[r, b, qo + j]
            else:
                d[r, b] = 0
                for j in range(qn):
                    qs[r, b * qn + j] = 0


def repack_rows(typ: int, raw: np.ndarray, n_out: int, n_in: int) -> tuple:
    """Raw block rows (n_out, bytes_per_row) -> (qs, d) of the module doc."""
    blk = np.asarray(raw).reshape(n_out, n_in // 32, BLOCK[typ][1])
    nbp = _nbp(typ, n_in)
    qn = 16 if typ == Q4_0 else 32
    qs = np.empty((n_out, nbp * qn), np.uint8)
    d = np.empty((n_out, nbp), np.uint16)
    _split(blk, 2, qn, qs, d)
    return (qs, d) if typ == Q4_0 else (qs.view(np.int8), d)


@nb.njit(**JIT)
def _prep_q4_0(qx, dx, nbp):
    n_tok, n_in = qx.shape
    nb_ = n_in // 32
    xlo = np.zeros((n_tok, nbp * 16), np.int8)
    xhi = np.zeros((n_tok, nbp * 16), np.int8)
    xd = np.zeros((n_tok, nbp * 4), np.float32)
    xo = np.zeros((n_tok, nbp * 4), np.int32)
    for t in range(n_tok):
        for b in range(nb_):
            s = 0
            for j in range(16):
                xlo[t, b * 16 + j] = qx[t, b * 32 + j]
                xhi[t, b * 16 + j] = qx[t, b * 32 + 16 + j]
                s += np.int32(qx[t, b * 32 + j]) + np.int32(qx[t, b * 32 + 16 + j])
            for k in range(4):
                xd[t, b * 4 + k] = dx[t, b]
                xo[t, b * 4 + k] = -2 * s
    return xlo, xhi, xd, xo


@nb.njit(**JIT)
def _prep_q8_0(qx, dx, nbp, bias):
    n_tok, n_in = qx.shape
    nb_ = n_in // 32
    xq = np.zeros((n_tok, nbp * 32), np.int8)
    xd = np.zeros((n_tok, nbp * 8), np.float32)
    xo = np.zeros((n_tok, nbp * 8), np.int32)
    for t in range(n_tok):
        for b in range(nb_):
            s = 0
            for j in range(32):
                xq[t, b * 32 + j] = qx[t, b * 32 + j]
                s += np.int32(qx[t, b * 32 + j])
            for k in range(8):
                xd[t, b * 8 + k] = dx[t, b]
                xo[t, b * 8 + k] = -(bias // 8) * s
    return xq, xd, xo


def prep(typ: int, level: str, qx: np.ndarray, dx: np.ndarray) -> tuple:
    """Q8_0 activations (qx (n, n_in) int8, dx (n, n_in/32) f32) -> the kernel's activation arrays."""
    nbp = _nbp(typ, qx.shape[1])
    if typ == Q4_0:
        return _prep_q4_0(qx, dx, nbp)
    return _prep_q8_0(qx, dx, nbp, S8S8_BIAS[level])


@nb.njit(**PJIT)
def mv_q4_0(isa, qs, d, xlo, xhi, xd, xo, y):
    """y (n_tok, n_out) = W @ x; arrays as repack_rows / prep make them."""
    H = qs.shape[1]  # quant bytes per row
    n_tok, n_out = y.shape
    W = width(isa)
    steps = H // W
    L = H // 4  # int32 lanes per row
    nd = d.shape[1]
    for r in nb.prange(n_out):
        for t in range(n_tok):
            acc = vzero_f32(isa)
            for i in range(steps):
                j = i * W
                w = vload_i8(isa, qs, r * H + j)
                a = vload_i32(isa, xo, t * L + j // 4)
                a = dot_u8s8(isa, a, vand(w, 15), vload_i8(isa, xlo, t * H + j))
                a = dot_u8s8(isa, a, vshr4(w), vload_i8(isa, xhi, t * H + j))
                s = vmul(vload_f16_x4(isa, d, r * nd + j // 16), vload_f32(isa, xd, t * L + j // 4))
                acc = vfma(vcvt(a), s, acc)
            y[t, r] = vhsum(acc)


@nb.njit(**PJIT)
def mv_q8_0(isa, qs, d, xq, xd, xo, y):
    H = qs.shape[1]
    n_tok, n_out = y.shape
    W = width(isa)
    steps = H // W
    L = H // 4
    nd = d.shape[1]
    for r in nb.prange(n_out):
        for t in range(n_tok):
            acc = vzero_f32(isa)
            for i in range(steps):
                j = i * W
                a = vload_i32(isa, xo, t * L + j // 4)
                a = dot_s8s8b(isa, a, vload_i8(isa, qs, r * H + j), vload_i8(isa, xq, t * H + j))
                s = vmul(vload_f16_x8(isa, d, r * nd + j // 32), vload_f32(isa, xd, t * L + j // 4))
                acc = vfma(vcvt(a), s, acc)
            y[t, r] = vhsum(acc)


MV = {Q4_0: mv_q4_0, Q8_0: mv_q8_0}
