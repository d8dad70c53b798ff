"""Decode kernels for Q4_0 and Q8_0 written on the SIMD layer (simd.py), one source for every level.

Owns: `repack_rows(typ, raw, n_out, n_in, level)` -> the layout below, `prep(typ, level, qx, dx)` -> the
activations arranged to match, and `mv_q4_0` / `mv_q8_0(isa, ...)`.

Layout: one int32 lane per block. With n32 = width(level)/4 lanes, the blocks of a row go in groups of n32;
within a group, vector step s holds bytes 4s..4s+3 of each of the n32 blocks side by side, so that after all
steps (4 for Q4_0's 16 nibble bytes, 8 for Q8_0's 32 bytes) lane k of the int32 sums holds block k's whole
dot product -- then one int->f32 conversion, one load of the n32 f16 scales (contiguous: vcvtph2ps), one
multiply by the activation scales and one FMA serve n32 blocks (the per-block scaling would otherwise cost
as much as the integer work). Rows are whole and in file order; each row is padded to a multiple of
GROUP_BLOCKS (16) blocks with zero blocks (zero scale: they add 0).
    Q4_0: qs (n_out, nbp*16) uint8 (nibble bytes: byte j of a block = weight j low, j+16 high), d (n_out, nbp)
    Q8_0: qs (n_out, nbp*32) int8, d (n_out, nbp) uint16 (f16 bits)
Arithmetic is llama.cpp's vec_dot_q4_0_q8_0 / q8_0_q8_0 on Q8_0 activations: the exact integer sum of q*x
per block, times d_w * d_x in f32, summed over blocks in f32. Offsets enter the integer lanes' start values:
Q4_0's (q - 8) as -8 * sum(x) of the block; the VNNI levels' Q8_0 (q + 128 taken as u8) as -128 * sum(x).
Must not: quantize activations (q8.py) or choose paths/levels (linear.py, isa.py).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .common import BLOCK, JIT, PJIT, Q4_0, Q8_0
from .simd import (S8S8_BIAS, WIDTH, dot_s8s8b, dot_u8s8, vadd, vand, vcvt, vfma, vhsum, vload_f16, vload_f32,
                   vload_i8, vload_i32, vmul, vshr4, vzero_f32, vzero_i32, width)

GROUP_BLOCKS = 16  # blocks per row are padded to a multiple of this (the widest level's lanes)
TYPES = (Q4_0, Q8_0)
LAYOUT_VERSION = 2
QBYTES = {Q4_0: 16, Q8_0: 32}


def _nbp(n_in: int) -> int:
    return -(-(n_in // 32) // GROUP_BLOCKS) * GROUP_BLOCKS


@nb.njit(parallel=True, cache=True, nogil=True)
def _interleave_rows(blk, qn, n32, qs, d):
    """blk (n_out, nb, 2 + qn) raw blocks -> qs (n_out, nbp*qn) in the group layout, d (n_out, nbp) f16 bits."""
    n_out, nb_, _ = blk.shape
    nbp = d.shape[1]
    gb = n32 * qn  # bytes per group
    for r in nb.prange(n_out):
        for b in range(nbp):
            g, k = b // n32, b % n32
            if b < nb_:
                d[r, b] = np.uint16(blk[r, b, 0]) | (np.uint16(blk[r, b, 1]) << np.uint16(8))
            else:
                d[r, b] = 0
            for j in range(qn):
                o = g * gb + (j // 4) * (4 * n32) + 4 * k + (j % 4)
                qs[r, o] = blk[r, b, 2 + j] if b < nb_ else 0


def repack_rows(typ: int, raw: np.ndarray, n_out: int, n_in: int, level: str) -> tuple:
    """Raw block rows (n_out, bytes_per_row) -> (qs, d) of the module doc, for `level`'s width."""
    blk = np.asarray(raw).reshape(n_out, n_in // 32, BLOCK[typ][1])
    nbp = _nbp(n_in)
    qn = QBYTES[typ]
    qs = np.empty((n_out, nbp * qn), np.uint8)
    d = np.empty((n_out, nbp), np.uint16)
    _interleave_rows(blk, qn, WIDTH[level] // 4, qs, d)
    return (qs, d) if typ == Q4_0 else (qs.view(np.int8), d)


@nb.njit(**JIT)
def _prep(qx, dx, nbp, n32, q4, bias):
    """Activations in the group layout: Q4_0 (q4) as two arrays, x[0:16] and x[16:32] of each block lined up
    with the low and high nibbles; Q8_0 as one. Plus per-block f32 scales and int32 offsets (zero padding)."""
    n_tok, n_in = qx.shape
    nb_ = n_in // 32
    qn = 16 if q4 else 32
    xa = np.zeros((n_tok, nbp * qn), np.int8)
    xb = np.zeros((n_tok, nbp * qn if q4 else 1), np.int8)
    xd = np.zeros((n_tok, nbp), np.float32)
    xo = np.zeros((n_tok, nbp), np.int32)
    gb = n32 * qn
    for t in range(n_tok):
        for b in range(nb_):
            g, k = b // n32, b % n32
            s = 0
            for j in range(32):
                s += np.int32(qx[t, b * 32 + j])
            for j in range(qn):
                o = g * gb + (j // 4) * (4 * n32) + 4 * k + (j % 4)
                xa[t, o] = qx[t, b * 32 + j]
                if q4:
                    xb[t, o] = qx[t, b * 32 + 16 + j]
            xd[t, b] = dx[t, b]
            xo[t, b] = -(8 if q4 else bias) * s
    return xa, xb, xd, xo


def prep(typ: int, level: str, qx: np.ndarray, dx: np.ndarray) -> tuple:
    """Q8_0 activations (qx (n, n_in) int8, dx (n, n_in/32) f32) -> the kernel's activation arrays."""
    xa, xb, xd, xo = _prep(qx, dx, _nbp(qx.shape[1]), WIDTH[level] // 4, typ == Q4_0, S8S8_BIAS[level])
    return (xa, xb, xd, xo) if typ == Q4_0 else (xa, xd, xo)


@nb.njit(**PJIT)
def mv_q4_0(isa, qs, d, xlo, xhi, xd, xo, y):
    """y (n_tok, n_out) = W @ x; arrays as repack_rows / prep make them."""
    H = qs.shape[1]  # quant bytes per row
    nbp = d.shape[1]
    n_tok, n_out = y.shape
    W = width(isa)
    n32 = W // 4
    for r in nb.prange(n_out):
        for t in range(n_tok):
            acc = vzero_f32(isa)
            for g in range(nbp // n32):
                b0 = g * n32
                q0 = r * H + g * 4 * W
                x0 = t * H + g * 4 * W
                w = vload_i8(isa, qs, q0)
                lo = dot_u8s8(isa, vload_i32(isa, xo, t * nbp + b0), vand(w, 15), vload_i8(isa, xlo, x0))
                hi = dot_u8s8(isa, vzero_i32(isa), vshr4(w), vload_i8(isa, xhi, x0))
                for s in range(1, 4):
                    w = vload_i8(isa, qs, q0 + s * W)
                    lo = dot_u8s8(isa, lo, vand(w, 15), vload_i8(isa, xlo, x0 + s * W))
                    hi = dot_u8s8(isa, hi, vshr4(w), vload_i8(isa, xhi, x0 + s * W))
                sc = vmul(vload_f16(isa, d, r * nbp + b0), vload_f32(isa, xd, t * nbp + b0))
                acc = vfma(vcvt(vadd(lo, hi)), sc, acc)
            y[t, r] = vhsum(acc)


@nb.njit(**PJIT)
def mv_q8_0(isa, qs, d, xq, xd, xo, y):
    H = qs.shape[1]
    nbp = d.shape[1]
    n_tok, n_out = y.shape
    W = width(isa)
    n32 = W // 4
    for r in nb.prange(n_out):
        for t in range(n_tok):
            acc = vzero_f32(isa)
            for g in range(nbp // n32):
                b0 = g * n32
                q0 = r * H + g * 8 * W
                x0 = t * H + g * 8 * W
                a = dot_s8s8b(isa, vload_i32(isa, xo, t * nbp + b0), vload_i8(isa, qs, q0), vload_i8(isa, xq, x0))
                c = dot_s8s8b(isa, vzero_i32(isa), vload_i8(isa, qs, q0 + W), vload_i8(isa, xq, x0 + W))
                for s in range(1, 4):
                    a = dot_s8s8b(isa, a, vload_i8(isa, qs, q0 + 2 * s * W), vload_i8(isa, xq, x0 + 2 * s * W))
                    c = dot_s8s8b(isa, c, vload_i8(isa, qs, q0 + (2 * s + 1) * W),
                                  vload_i8(isa, xq, x0 + (2 * s + 1) * W))
                sc = vmul(vload_f16(isa, d, r * nbp + b0), vload_f32(isa, xd, t * nbp + b0))
                acc = vfma(vcvt(vadd(a, c)), sc, acc)
            y[t, r] = vhsum(acc)


MV = {Q4_0: mv_q4_0, Q8_0: mv_q8_0}
