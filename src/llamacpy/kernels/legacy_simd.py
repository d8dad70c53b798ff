"""Decode kernels for the legacy types (Q4_0, Q8_0, Q4_1, Q5_0, Q5_1) on the SIMD layer (simd.py), one source
for every level.

Owns: `repack_rows(typ, raw, n_out, n_in, level)` -> the layout below, `prep(typ, level, qx, dx[, sx])` -> the
activations arranged to match (`activations(typ, level, x)`: the same from f32 x, quantized in the same
call), and `mv_q4_0` / `mv_q8_0` / `mv_q4_1` / `mv_q5_0` / `mv_q5_1(isa, ...)`.

Layout: one int32 lane per block. With n32 = width(level)/4 lanes, the blocks of a row go in groups of n32;
within a group, vector step s holds bytes 4s..4s+3 of each of the n32 blocks side by side, so that after all
steps (4 for Q4_0's 16 nibble bytes, 8 for Q8_0's 32 bytes) lane k of the int32 sums holds block k's whole
dot product -- then one int->f32 conversion, one load of the n32 f16 scales (contiguous: vcvtph2ps), one
multiply by the activation scales and one FMA serve n32 blocks (the per-block scaling would otherwise cost
as much as the integer work). Rows are whole and in file order; each row is padded to a multiple of
GROUP_BLOCKS (16) blocks with zero blocks (zero scale: they add 0).
    Q4_0: qs (n_out, nbp*16) uint8 (nibble bytes: byte j of a block = weight j low, j+16 high), d (n_out, nbp)
    Q8_0: qs (n_out, nbp*32) int8, d (n_out, nbp) uint16 (f16 bits)
    Q4_1: qs as Q4_0, d and m (n_out, nbp) f16 bits
    Q5_0 / Q5_1: qs as Q4_0, qh (n_out, nbp*4) uint8, d (and Q5_1's m) (n_out, nbp): the 5th bits as bit planes,
        one width-byte vector per group: byte 4k+p of group vector = block k, bit s (0..3) = 5th bit of weight
        4s+p (the low nibble at step s, byte p), bit 4+s = that of weight 16+4s+p (the high nibble) -- so step s
        takes its bits with one shift and one AND per half (as big as the file's qh: 4 bytes a block).
Arithmetic is llama.cpp's vec_dot_q4_0_q8_0 / q8_0_q8_0 on Q8_0 activations: the exact integer sum of q*x
per block, times d_w * d_x in f32, summed over blocks in f32. Offsets enter the integer lanes' start values:
Q4_0's (q - 8) as -8 * sum(x) of the block, Q5_0's (q - 16) as -16 * sum(x); the VNNI levels' Q8_0 (q + 128
taken as u8) as -128 * sum(x). Q4_1 / Q5_1 (vec_dot_q4_1_q8_1 / q5_1_q8_1): d*dx*sum(q*x) + m*s per block with
Q8_1's s = f16(dx * sum(qx)), the min term FMA'd per lane into the same f32 sums. 5-bit values (0..31) times
|x| <= 127, two per pmaddubsw pair: at most 7874, no int16 saturation on avx2.
Must not: define the activation quantization (q8.py's, called as is) or choose paths/levels (linear.py, isa.py).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .common import BLOCK, JIT, PJIT, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
from .q8 import _q8_0
from .simd import (S8S8_BIAS, WIDTH, dot_s8s8b, dot_u8s8, vadd, vand, vcvt, vfma, vhsum, vload_f16, vload_f32,
                   vload_i8, vload_i32, vmul, vor, vshl, vshr, vshr4, vzero_f32, vzero_i32, width)

GROUP_BLOCKS = 16  # blocks per row are padded to a multiple of this (the widest level's lanes)
TYPES = (Q4_0, Q8_0, Q4_1, Q5_0, Q5_1)
LAYOUT_VERSION = 2  # of Q4_0 / Q8_0's layout (the other types' layouts are new; their cache keys name the type)
QBYTES = {Q4_0: 16, Q8_0: 32}
# byte offsets in a block of the quants, the min (f16), the 5th bits (uint32); -1: none. d is at 0 in every type
FIELDS = {Q4_1: (4, 2, -1), Q5_0: (6, -1, 2), Q5_1: (8, 2, 4)}


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


@nb.njit(parallel=True, cache=True, nogil=True)
def _interleave_more(blk, qo, mo, ho, n32, qs, d, m, h):
    """Q4_1 / Q5_0 / Q5_1: blk (n_out, nb, bytes) -> qs (n_out, nbp*16) nibble bytes in the group layout, d and m
    (n_out, nbp) f16 bits, h (n_out, nbp*4) the 5th bits as bit planes (see the module doc); mo/ho < 0: absent."""
    n_out, nb_, _ = blk.shape
    nbp = d.shape[1]
    for r in nb.prange(n_out):
        for b in range(nbp):
            g, k = b // n32, b % n32
            real = b < nb_
            d[r, b] = (np.uint16(blk[r, b, 0]) | (np.uint16(blk[r, b, 1]) << np.uint16(8))) if real else 0
            if mo >= 0:
                m[r, b] = (np.uint16(blk[r, b, mo]) | (np.uint16(blk[r, b, mo + 1]) << np.uint16(8))) if real else 0
            for j in range(16):
                qs[r, g * 16 * n32 + (j // 4) * (4 * n32) + 4 * k + (j % 4)] = blk[r, b, qo + j] if real else 0
            if ho >= 0:
                bits = np.uint32(0)
                if real:
                    for j in range(4):
                        bits |= np.uint32(blk[r, b, ho + j]) << np.uint32(8 * j)
                for p in range(4):
                    v = 0
                    for s in range(4):
                        v |= ((bits >> np.uint32(4 * s + p)) & 1) << s
                        v |= ((bits >> np.uint32(16 + 4 * s + p)) & 1) << (4 + s)
                    h[r, g * 4 * n32 + 4 * k + p] = v


def repack_rows(typ: int, raw: np.ndarray, n_out: int, n_in: int, level: str) -> tuple:
    """Raw block rows (n_out, bytes_per_row) -> the arrays of the module doc, for `level`'s width."""
    blk = np.asarray(raw).reshape(n_out, n_in // 32, BLOCK[typ][1])
    nbp = _nbp(n_in)
    if typ in FIELDS:
        qo, mo, ho = FIELDS[typ]
        qs = np.empty((n_out, nbp * 16), np.uint8)
        d = np.empty((n_out, nbp), np.uint16)
        m = np.empty((n_out, nbp if mo >= 0 else 1), np.uint16)
        h = np.empty((n_out, nbp * 4 if ho >= 0 else 1), np.uint8)
        _interleave_more(blk, qo, mo, ho, WIDTH[level] // 4, qs, d, m, h)
        return {Q4_1: (qs, d, m), Q5_0: (qs, h, d), Q5_1: (qs, h, d, m)}[typ]
    qn = QBYTES[typ]
    qs = np.empty((n_out, nbp * qn), np.uint8)
    d = np.empty((n_out, nbp), np.uint16)
    _interleave_rows(blk, qn, WIDTH[level] // 4, qs, d)
    return (qs, d) if typ == Q4_0 else (qs.view(np.int8), d)


@nb.njit(**JIT)
def _prep(qx, dx, nbp, n32, split, off):
    """Activations in the group layout: the 4/5-bit types (split) as two arrays, x[0:16] and x[16:32] of each block
    lined up with the low and high nibbles; Q8_0 as one. Plus per-block f32 scales and the int32 start values
    -off * sum(x) of each block's integer sum (zero padding). The layout moves whole 4-byte words (byte j of a
    block goes to word j // 4 of its lane, byte j % 4), so it is copied as int32 words."""
    n_tok, n_in = qx.shape
    nb_ = n_in // 32
    qn = 16 if split else 32
    qw = qn // 4  # words per block per array
    xa = np.zeros((n_tok, nbp * qn), np.int8)
    xb = np.zeros((n_tok, nbp * qn if split else 4), np.int8)  # (unused by Q8_0: one word, so it views as int32)
    xd = np.zeros((n_tok, nbp), np.float32)
    xo = np.zeros((n_tok, nbp), np.int32)
    for t in range(n_tok):
        src = qx[t].view(np.int32)  # (n_in / 4,)
        wa = xa[t].view(np.int32)
        wb = xb[t].view(np.int32)
        for b in range(nb_):
            g, k = b // n32, b % n32
            s = 0
            for j in range(32):
                s += np.int32(qx[t, b * 32 + j])
            o = g * qw * n32 + k  # word of lane k at step 0
            for w in range(qw):
                wa[o + w * n32] = src[b * 8 + w]
                if split:
                    wb[o + w * n32] = src[b * 8 + 4 + w]
            xd[t, b] = dx[t, b]
            xo[t, b] = -off * s
    return xa, xb, xd, xo


def _offset(typ: int, level: str) -> int:
    """The integer offset the activation layout folds into the start values (see _OFF)."""
    off = _OFF.get(typ, 0)
    return S8S8_BIAS[level] if off is None else off


def _for_kernel(typ: int, xa, xb, xd, xo, sx):
    """The activation arrays MV[typ] takes, from the layout's arrays (and Q8_1's sums for Q4_1/Q5_1)."""
    if typ == Q8_0:
        return xa, xd, xo
    if typ in (Q4_1, Q5_1):
        return xa, xb, xd, _xs(sx, xd.shape[1])
    return xa, xb, xd, xo


def prep(typ: int, level: str, qx: np.ndarray, dx: np.ndarray, sx: np.ndarray | None = None) -> tuple:
    """Q8_0 activations (qx (n, n_in) int8, dx (n, n_in/32) f32; for Q4_1/Q5_1 also Q8_1's sx (n, n_in/32) f32)
    -> the kernel's activation arrays."""
    if typ in (Q4_1, Q5_1) and sx is None:
        raise ValueError("Q4_1/Q5_1 need Q8_1's block sums sx")
    xa, xb, xd, xo = _prep(qx, dx, _nbp(qx.shape[1]), WIDTH[level] // 4, typ != Q8_0, _offset(typ, level))
    return _for_kernel(typ, xa, xb, xd, xo, sx)


@nb.njit(cache=True, nogil=True)  # no fastmath: _q8_0's rounding stays IEEE (it is compiled by its own flags anyway)
def _quant_prep(x, nbp, n32, split, off):
    """_prep of q8._q8_0(x) in one compiled call, plus Q8_1's sums sx."""
    qx, dx, sx = _q8_0(x)
    xa, xb, xd, xo = _prep(qx, dx, nbp, n32, split, off)
    return xa, xb, xd, xo, sx


def activations(typ: int, level: str, x: np.ndarray) -> tuple:
    """prep(typ, level, *q8.quantize_q8_0(x)) -- the same arrays bit for bit -- in one compiled call (the decode
    path's: one dispatch and no intermediate arrays handed through Python). x: (n, n_in) f32 C-contiguous."""
    return _for_kernel(typ, *_quant_prep(x, _nbp(x.shape[1]), WIDTH[level] // 4, typ != Q8_0, _offset(typ, level)))


_OFF = {Q4_0: 8, Q5_0: 16, Q8_0: None}  # the integer offset prep folds into the start values (None: the level's)


@nb.njit(**PJIT)
def mv_q4_0(isa, qs, d, xlo, xhi, xd, xo, y):
    """y (n_tok, n_out) = W @ x; arrays as repack_rows / prep make them."""
    H = qs.shape[1]  # quant bytes per row
    nbp = d.shape[1]
    n_tok, n_out = y.shape
    for r in nb.prange(n_out):
        W = width(isa)  # inside the parallel body: a constant there (see below)
        n32 = W // 4
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
    for r in nb.prange(n_out):
        W = width(isa)  # inside the parallel body: a constant there (see below)
        n32 = W // 4
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


# -- Q4_1, Q5_0, Q5_1 ---------------------------------------------------------------------------------------
# W (and so the load offsets) is computed inside the prange body: numba passes values defined outside a prange
# loop into the outlined parallel function as arguments, where they are no longer compile-time constants.


@nb.njit(**PJIT)
def mv_q4_1(isa, qs, d, m, xlo, xhi, xd, xs, y):
    """Q4_1 on Q8_1 activations: per block d*dx*sum(q*qx) + m*s, s = f16(dx * sum qx) (vec_dot_q4_1_q8_1)."""
    H = qs.shape[1]
    nbp = d.shape[1]
    n_tok, n_out = y.shape
    for r in nb.prange(n_out):
        W = width(isa)
        n32 = W // 4
        for t in range(n_tok):
            acc = vzero_f32(isa)
            for g in range(nbp // n32):
                b0 = g * n32
                q0 = r * H + g * 4 * W
                x0 = t * H + g * 4 * W
                lo = vzero_i32(isa)
                hi = vzero_i32(isa)
                for s in range(4):
                    w = vload_i8(isa, qs, q0 + s * W)
                    lo = dot_u8s8(isa, lo, vand(w, 15), vload_i8(isa, xlo, x0 + s * W))
                    hi = dot_u8s8(isa, hi, vshr4(w), vload_i8(isa, xhi, x0 + s * W))
                sc = vmul(vload_f16(isa, d, r * nbp + b0), vload_f32(isa, xd, t * nbp + b0))
                acc = vfma(vcvt(vadd(lo, hi)), sc, acc)
                acc = vfma(vload_f16(isa, m, r * nbp + b0), vload_f32(isa, xs, t * nbp + b0), acc)
            y[t, r] = vhsum(acc)


@nb.njit(inline="always", cache=True, nogil=True)
def _q5_step(isa, lo, hi, qs, q, hb, xlo, xhi, x, s):
    """One vector step s (0..3) of a 5-bit group: nibbles | 5th bits (bit s -> bit 4 for the low halves, bit 4+s
    -> bit 4 for the high ones), u8 * s8 into lo / hi."""
    w = vload_i8(isa, qs, q)
    wl = vor(vand(w, 15), vand(vshl(hb, 4 - s), 16))
    wh = vor(vshr4(w), vand(vshr(hb, s), 16))
    return dot_u8s8(isa, lo, wl, vload_i8(isa, xlo, x)), dot_u8s8(isa, hi, wh, vload_i8(isa, xhi, x))


@nb.njit(**PJIT)
def mv_q5_0(isa, qs, qh, d, xlo, xhi, xd, xo, y):
    """Q5_0 on Q8_0 activations: d*dx*sum((q - 16)*qx) per block (vec_dot_q5_0_q8_0); the -16 * sum(qx) is xo."""
    H = qs.shape[1]
    nbp = d.shape[1]
    n_tok, n_out = y.shape
    for r in nb.prange(n_out):
        W = width(isa)
        n32 = W // 4
        for t in range(n_tok):
            acc = vzero_f32(isa)
            for g in range(nbp // n32):
                b0 = g * n32
                q0 = r * H + g * 4 * W
                x0 = t * H + g * 4 * W
                hb = vload_i8(isa, qh, r * nbp * 4 + g * W)
                lo, hi = _q5_step(isa, vload_i32(isa, xo, t * nbp + b0), vzero_i32(isa), qs, q0, hb, xlo, xhi, x0, 0)
                lo, hi = _q5_step(isa, lo, hi, qs, q0 + W, hb, xlo, xhi, x0 + W, 1)
                lo, hi = _q5_step(isa, lo, hi, qs, q0 + 2 * W, hb, xlo, xhi, x0 + 2 * W, 2)
                lo, hi = _q5_step(isa, lo, hi, qs, q0 + 3 * W, hb, xlo, xhi, x0 + 3 * W, 3)
                sc = vmul(vload_f16(isa, d, r * nbp + b0), vload_f32(isa, xd, t * nbp + b0))
                acc = vfma(vcvt(vadd(lo, hi)), sc, acc)
            y[t, r] = vhsum(acc)


@nb.njit(**PJIT)
def mv_q5_1(isa, qs, qh, d, m, xlo, xhi, xd, xs, y):
    """Q5_1 on Q8_1 activations: d*dx*sum(q*qx) + m*s per block (vec_dot_q5_1_q8_1)."""
    H = qs.shape[1]
    nbp = d.shape[1]
    n_tok, n_out = y.shape
    for r in nb.prange(n_out):
        W = width(isa)
        n32 = W // 4
        for t in range(n_tok):
            acc = vzero_f32(isa)
            for g in range(nbp // n32):
                b0 = g * n32
                q0 = r * H + g * 4 * W
                x0 = t * H + g * 4 * W
                hb = vload_i8(isa, qh, r * nbp * 4 + g * W)
                lo, hi = _q5_step(isa, vzero_i32(isa), vzero_i32(isa), qs, q0, hb, xlo, xhi, x0, 0)
                lo, hi = _q5_step(isa, lo, hi, qs, q0 + W, hb, xlo, xhi, x0 + W, 1)
                lo, hi = _q5_step(isa, lo, hi, qs, q0 + 2 * W, hb, xlo, xhi, x0 + 2 * W, 2)
                lo, hi = _q5_step(isa, lo, hi, qs, q0 + 3 * W, hb, xlo, xhi, x0 + 3 * W, 3)
                sc = vmul(vload_f16(isa, d, r * nbp + b0), vload_f32(isa, xd, t * nbp + b0))
                acc = vfma(vcvt(vadd(lo, hi)), sc, acc)
                acc = vfma(vload_f16(isa, m, r * nbp + b0), vload_f32(isa, xs, t * nbp + b0), acc)
            y[t, r] = vhsum(acc)


MV = {Q4_0: mv_q4_0, Q8_0: mv_q8_0, Q4_1: mv_q4_1, Q5_0: mv_q5_0, Q5_1: mv_q5_1}


# Decode from f32 activations: quantize + layout (_quant_prep) and the kernel in one compiled call, so that no
# activation array is handed to Python and back (numba boxes each returned array: ~1 us apiece here, 4-5 per
# matmul) -- the same arrays and the same kernel as MV[typ](isa, *packed, *activations(typ, level, x), y).
# Arguments: (isa, *packed, x (n_tok, n_in) f32 C-contiguous, n32 = width/4, off = _OFF / S8S8_BIAS, y).
@nb.njit(cache=True, nogil=True)
def _xs(sx, nbp):
    xs = np.zeros((sx.shape[0], nbp), np.float32)  # (n_tok, nbp): Q8_1's sums, zero padding
    xs[:, :sx.shape[1]] = sx
    return xs


@nb.njit(cache=True, nogil=True)
def mvx_q4_0(isa, qs, d, x, n32, off, y):
    xa, xb, xd, xo, _ = _quant_prep(x, d.shape[1], n32, True, off)
    mv_q4_0(isa, qs, d, xa, xb, xd, xo, y)


@nb.njit(cache=True, nogil=True)
def mvx_q8_0(isa, qs, d, x, n32, off, y):
    xa, _, xd, xo, _ = _quant_prep(x, d.shape[1], n32, False, off)
    mv_q8_0(isa, qs, d, xa, xd, xo, y)


@nb.njit(cache=True, nogil=True)
def mvx_q4_1(isa, qs, d, m, x, n32, off, y):
    xa, xb, xd, _, sx = _quant_prep(x, d.shape[1], n32, True, off)
    mv_q4_1(isa, qs, d, m, xa, xb, xd, _xs(sx, d.shape[1]), y)


@nb.njit(cache=True, nogil=True)
def mvx_q5_0(isa, qs, qh, d, x, n32, off, y):
    xa, xb, xd, xo, _ = _quant_prep(x, d.shape[1], n32, True, off)
    mv_q5_0(isa, qs, qh, d, xa, xb, xd, xo, y)


@nb.njit(cache=True, nogil=True)
def mvx_q5_1(isa, qs, qh, d, m, x, n32, off, y):
    xa, xb, xd, _, sx = _quant_prep(x, d.shape[1], n32, True, off)
    mv_q5_1(isa, qs, qh, d, m, xa, xb, xd, _xs(sx, d.shape[1]), y)


MVX = {Q4_0: mvx_q4_0, Q8_0: mvx_q8_0, Q4_1: mvx_q4_1, Q5_0: mvx_q5_0, Q5_1: mvx_q5_1}


def mvx_args(typ: int, level: str) -> tuple:
    """The (n32, off) that MVX[typ] takes after x at `level`."""
    return WIDTH[level] // 4, _offset(typ, level)
