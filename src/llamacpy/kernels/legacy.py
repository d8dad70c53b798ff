"""Decode kernels for the legacy block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) on a row-interleaved repack.

Owns: `repack_<type>(raw, n_out, n_in, R)` (numpy, once at load) and `mv_<type>(...)` (numba, one call per
matrix, prange over groups of R output rows). The repack puts, for each group of R rows and each block b,
the R block scales side by side (f32) and quant byte j of the R rows contiguous, so that the innermost loop runs
across rows and vectorises; int32 per-block sums, f32 scaling -- llama.cpp's vec_dot_<type>_q8_0/q8_1
arithmetic, with the activations from q8.quantize_q8_0.

Layouts (G = ceil(n_out / R) groups, nb = n_in / 32 blocks; rows past n_out are zero padding):
    qs (G, nb, 16, R) uint8   byte j: low nibble = weight j, high nibble = weight j+16 (Q4_*, Q5_*)
    qs (G, nb, 32, R) int8    (Q8_0)
    qh (G, nb, R) uint32      bit j = 5th bit of weight j (Q5_*)
    d, m (G, nb, R) uint16    block scale, min (Q4_1/Q5_1) as f16 bits -- the repack is no bigger than the file
Must not: quantize activations (q8.py) or choose paths (linear.py).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .common import PJIT, f16_bits_to_f32


@nb.njit(parallel=True, cache=True, nogil=True)
def _interleave(src, out):
    """out[g, a, b, r] = src[g*R + r, a, b] (zero where g*R + r >= n_out).  src: (n_out, A, B) any strides;
    out: (G, A, B, R). One parallel pass -- measured ~10x faster than numpy's pad + transpose + copy."""
    n_out, A, B = src.shape
    G, _, _, R = out.shape
    for g in nb.prange(G):
        for a in range(A):
            for b in range(B):
                for r in range(R):
                    i = g * R + r
                    out[g, a, b, r] = src[i, a, b] if i < n_out else 0


def _il(a: np.ndarray, n_out: int, R: int) -> np.ndarray:
    """(n_out, A) or (n_out, A, B) -> (G, A, R) or (G, A, B, R): rows interleaved in groups of R, zero padded."""
    a3 = a if a.ndim == 3 else a[:, :, None]
    out = np.empty((-(-n_out // R), a3.shape[1], a3.shape[2], R), a.dtype)
    _interleave(a3, out)
    return out if a.ndim == 3 else out[:, :, 0, :]


def _f16_bits(blk: np.ndarray, o: int) -> np.ndarray:
    """The f16 at byte o of every block, as its uint16 bits: (n_out, nb)."""
    return np.ascontiguousarray(blk[:, :, o:o + 2]).view(np.uint16)[:, :, 0]


def _scale(blk: np.ndarray, o: int, n_out: int, R: int) -> np.ndarray:
    """f16 at byte o of every block -> (G, nb, R) uint16 f16 bits (converted in the kernels: vcvtph2ps)."""
    return _il(_f16_bits(blk, o), n_out, R)


def _quants(blk: np.ndarray, o: int, n: int, n_out: int, R: int) -> np.ndarray:
    """bytes o..o+n of every block -> (G, nb, n, R)."""
    return _il(blk[:, :, o:o + n], n_out, R)


def _qh(blk: np.ndarray, o: int, n_out: int, R: int) -> np.ndarray:
    return _il(np.ascontiguousarray(blk[:, :, o:o + 4]).view("<u4")[:, :, 0], n_out, R)


def repack(typ: int, raw: np.ndarray, n_out: int, n_in: int, R: int) -> tuple:
    """Raw block rows (n_out, bytes_per_row) -> the arrays the type's mv_ kernel takes (see module doc)."""
    from .common import BLOCK, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0

    blk = raw.reshape(n_out, n_in // 32, BLOCK[typ][1])
    if typ == Q4_0:
        return _quants(blk, 2, 16, n_out, R), _scale(blk, 0, n_out, R)
    if typ == Q4_1:
        return _quants(blk, 4, 16, n_out, R), _scale(blk, 0, n_out, R), _scale(blk, 2, n_out, R)
    if typ == Q5_0:
        return _quants(blk, 6, 16, n_out, R), _qh(blk, 2, n_out, R), _scale(blk, 0, n_out, R)
    if typ == Q5_1:
        return (_quants(blk, 8, 16, n_out, R), _qh(blk, 4, n_out, R), _scale(blk, 0, n_out, R),
                _scale(blk, 2, n_out, R))
    if typ == Q8_0:
        return _quants(blk, 2, 32, n_out, R).view(np.int8), _scale(blk, 0, n_out, R)
    raise ValueError(typ)


# Loop order (measured): for each block, rows outer and the 16/32 bytes of a block inner -- the inner loop is
# fully unrolled by LLVM and the row loop vectorised, so the per-row sums stay in registers. Sums are kept in
# int16 (32 lanes per AVX-512 register) with wrap-around arithmetic: sum((q - off) * x) over a run of n weights
# is exact in int16 whenever off*127*n <= 32767 -- the wrapped sum of q*x minus the wrapped off*sum(x) lands on
# the true value (arithmetic mod 2**16). Runs: 32 weights for 4-bit (off 8), 16 for 5-bit (off 16).
# Measured on a 5632x2048 Q4_0 matrix from DRAM: 12.8 -> 20.5 GB/s on one thread (int32, rows inner -> this).
I16 = np.int16


@nb.njit(**PJIT)
def mv_q4_0(qs, d, xq, xd, xs, y):
    """y (n_tok, n_out) = W @ x.  xq (n_tok, n_in) int8, xd (n_tok, nb) f32 Q8_0 scales, xs unused (Q8_1 s)."""
    G, nb_, _, R = qs.shape
    n_tok, n_out = y.shape
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        for t in range(n_tok):
            acc[:] = 0.0
            for b in range(nb_):
                o = b * 32
                sx = 0
                for j in range(32):
                    sx += np.int32(xq[t, o + j])
                off = I16(8 * sx)
                f = xd[t, b]
                for r in range(R):
                    s = I16(0)
                    for j in range(16):
                        v = I16(qs[g, b, j, r])
                        s = I16(s + I16(I16(v & 15) * I16(xq[t, o + j])) + I16(I16(v >> 4) * I16(xq[t, o + 16 + j])))
                    acc[r] += f16_bits_to_f32(d[g, b, r]) * f * np.float32(I16(s - off))
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]


@nb.njit(**PJIT)
def mv_q4_1(qs, d, m, xq, xd, xs, y):
    """As mv_q4_0 with w = d*q + m: d*dx*sum(q*x) + m*s (s = Q8_1's f16(dx * sum x))."""
    G, nb_, _, R = qs.shape
    n_tok, n_out = y.shape
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        for t in range(n_tok):
            acc[:] = 0.0
            for b in range(nb_):
                o = b * 32
                sx = 0
                for j in range(32):
                    sx += np.int32(xq[t, o + j])
                off = I16(8 * sx)
                f = xd[t, b]
                sb = xs[t, b]
                for r in range(R):
                    s = I16(0)
                    for j in range(16):
                        v = I16(qs[g, b, j, r])
                        s = I16(s + I16(I16(v & 15) * I16(xq[t, o + j])) + I16(I16(v >> 4) * I16(xq[t, o + 16 + j])))
                    isum = np.int32(I16(s - off)) + 8 * sx
                    acc[r] += f16_bits_to_f32(d[g, b, r]) * f * np.float32(isum) + f16_bits_to_f32(m[g, b, r]) * sb
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]


@nb.njit(**PJIT)
def mv_q5_0(qs, qh, d, xq, xd, xs, y):
    G, nb_, _, R = qs.shape
    n_tok, n_out = y.shape
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        for t in range(n_tok):
            acc[:] = 0.0
            for b in range(nb_):
                o = b * 32
                sl = 0
                sh = 0
                for j in range(16):
                    sl += np.int32(xq[t, o + j])
                    sh += np.int32(xq[t, o + 16 + j])
                offl = I16(16 * sl)
                offh = I16(16 * sh)
                f = xd[t, b]
                for r in range(R):
                    a = I16(0)
                    c = I16(0)
                    h = qh[g, b, r]
                    for j in range(16):
                        v = I16(qs[g, b, j, r])
                        lo = I16(v & 15) | I16(I16((h >> j) & 1) << 4)
                        hi = I16(v >> 4) | I16(I16((h >> (j + 16)) & 1) << 4)
                        a = I16(a + I16(lo * I16(xq[t, o + j])))
                        c = I16(c + I16(hi * I16(xq[t, o + 16 + j])))
                    isum = np.int32(I16(a - offl)) + np.int32(I16(c - offh))
                    acc[r] += f16_bits_to_f32(d[g, b, r]) * f * np.float32(isum)
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]


@nb.njit(**PJIT)
def mv_q5_1(qs, qh, d, m, xq, xd, xs, y):
    G, nb_, _, R = qs.shape
    n_tok, n_out = y.shape
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        for t in range(n_tok):
            acc[:] = 0.0
            for b in range(nb_):
                o = b * 32
                sl = 0
                sh = 0
                for j in range(16):
                    sl += np.int32(xq[t, o + j])
                    sh += np.int32(xq[t, o + 16 + j])
                offl = I16(16 * sl)
                offh = I16(16 * sh)
                f = xd[t, b]
                sb = xs[t, b]
                for r in range(R):
                    a = I16(0)
                    c = I16(0)
                    h = qh[g, b, r]
                    for j in range(16):
                        v = I16(qs[g, b, j, r])
                        lo = I16(v & 15) | I16(I16((h >> j) & 1) << 4)
                        hi = I16(v >> 4) | I16(I16((h >> (j + 16)) & 1) << 4)
                        a = I16(a + I16(lo * I16(xq[t, o + j])))
                        c = I16(c + I16(hi * I16(xq[t, o + 16 + j])))
                    isum = np.int32(I16(a - offl)) + np.int32(I16(c - offh)) + 16 * (sl + sh)
                    acc[r] += f16_bits_to_f32(d[g, b, r]) * f * np.float32(isum) + f16_bits_to_f32(m[g, b, r]) * sb
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]


@nb.njit(**PJIT)
def mv_q8_0(qs, d, xq, xd, xs, y):
    """int8 x int8 products need int32 sums (|q*x| up to 16256, 32 of them). Here the other loop order measured
    faster (21 vs 12 GB/s on one thread): bytes outer, rows inner, row sums in a small int32 array."""
    G, nb_, _, R = qs.shape
    n_tok, n_out = y.shape
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        isum = np.empty(R, np.int32)
        for t in range(n_tok):
            acc[:] = 0.0
            for b in range(nb_):
                isum[:] = 0
                for j in range(32):
                    xv = np.int32(xq[t, b * 32 + j])
                    for r in range(R):
                        isum[r] += np.int32(qs[g, b, j, r]) * xv
                f = xd[t, b]
                for r in range(R):
                    acc[r] += f16_bits_to_f32(d[g, b, r]) * f * np.float32(isum[r])
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]
