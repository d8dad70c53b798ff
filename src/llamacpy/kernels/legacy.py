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
    d, m (G, nb, R) float32   block scale, min (Q4_1/Q5_1)
Must not: quantize activations (q8.py) or choose paths (linear.py).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .common import PJIT


def _groups(a: np.ndarray, n_out: int, R: int) -> np.ndarray:
    """(n_out, ...) -> (G, R, ...) with zero rows appended up to a multiple of R."""
    G = -(-n_out // R)
    if G * R != n_out:
        pad = np.zeros((G * R - n_out,) + a.shape[1:], a.dtype)
        a = np.concatenate([a, pad])
    return a.reshape((G, R) + a.shape[1:])


def _scale(blk: np.ndarray, o: int, n_out: int, R: int) -> np.ndarray:
    """f16 at byte o of every block -> (G, nb, R) float32."""
    v = np.ascontiguousarray(blk[:, :, o:o + 2]).view(np.float16)[:, :, 0].astype(np.float32)  # (n_out, nb)
    return np.ascontiguousarray(_groups(v, n_out, R).transpose(0, 2, 1))


def _quants(blk: np.ndarray, o: int, n: int, n_out: int, R: int) -> np.ndarray:
    """bytes o..o+n of every block -> (G, nb, n, R)."""
    return np.ascontiguousarray(_groups(blk[:, :, o:o + n], n_out, R).transpose(0, 2, 3, 1))


def _qh(blk: np.ndarray, o: int, n_out: int, R: int) -> np.ndarray:
    v = np.ascontiguousarray(blk[:, :, o:o + 4]).view("<u4")[:, :, 0]  # (n_out, nb)
    return np.ascontiguousarray(_groups(v, n_out, R).transpose(0, 2, 1))


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


@nb.njit(**PJIT)
def mv_q4_0(qs, d, xq, xd, xs, y):
    """y (n_tok, n_out) = W @ x.  xq (n_tok, n_in) int8, xd (n_tok, nb) f32 Q8_0 scales, xs unused (Q8_1 s)."""
    G, nb_, _, R = qs.shape
    n_tok, n_out = y.shape
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        isum = np.empty(R, np.int32)
        for t in range(n_tok):
            acc[:] = 0.0
            for b in range(nb_):
                isum[:] = 0
                sx = 0
                for j in range(16):
                    xl = np.int32(xq[t, b * 32 + j])
                    xh = np.int32(xq[t, b * 32 + 16 + j])
                    sx += xl + xh
                    for r in range(R):
                        v = np.int32(qs[g, b, j, r])
                        isum[r] += (v & 15) * xl + (v >> 4) * xh
                f = xd[t, b]
                off = 8 * sx
                for r in range(R):
                    acc[r] += d[g, b, r] * f * np.float32(isum[r] - off)
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]


@nb.njit(**PJIT)
def mv_q4_1(qs, d, m, xq, xd, xs, y):
    G, nb_, _, R = qs.shape
    n_tok, n_out = y.shape
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        isum = np.empty(R, np.int32)
        for t in range(n_tok):
            acc[:] = 0.0
            for b in range(nb_):
                isum[:] = 0
                for j in range(16):
                    xl = np.int32(xq[t, b * 32 + j])
                    xh = np.int32(xq[t, b * 32 + 16 + j])
                    for r in range(R):
                        v = np.int32(qs[g, b, j, r])
                        isum[r] += (v & 15) * xl + (v >> 4) * xh
                f = xd[t, b]
                s = xs[t, b]
                for r in range(R):
                    acc[r] += d[g, b, r] * f * np.float32(isum[r]) + m[g, b, r] * s
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]


@nb.njit(**PJIT)
def mv_q5_0(qs, qh, d, xq, xd, xs, y):
    G, nb_, _, R = qs.shape
    n_tok, n_out = y.shape
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        isum = np.empty(R, np.int32)
        for t in range(n_tok):
            acc[:] = 0.0
            for b in range(nb_):
                isum[:] = 0
                sx = 0
                for j in range(16):
                    xl = np.int32(xq[t, b * 32 + j])
                    xh = np.int32(xq[t, b * 32 + 16 + j])
                    sx += xl + xh
                    for r in range(R):
                        v = np.int32(qs[g, b, j, r])
                        h = qh[g, b, r]
                        lo = (v & 15) | (np.int32((h >> j) & 1) << 4)
                        hi = (v >> 4) | (np.int32((h >> (j + 16)) & 1) << 4)
                        isum[r] += lo * xl + hi * xh
                f = xd[t, b]
                off = 16 * sx
                for r in range(R):
                    acc[r] += d[g, b, r] * f * np.float32(isum[r] - off)
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]


@nb.njit(**PJIT)
def mv_q5_1(qs, qh, d, m, xq, xd, xs, y):
    G, nb_, _, R = qs.shape
    n_tok, n_out = y.shape
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        isum = np.empty(R, np.int32)
        for t in range(n_tok):
            acc[:] = 0.0
            for b in range(nb_):
                isum[:] = 0
                for j in range(16):
                    xl = np.int32(xq[t, b * 32 + j])
                    xh = np.int32(xq[t, b * 32 + 16 + j])
                    for r in range(R):
                        v = np.int32(qs[g, b, j, r])
                        h = qh[g, b, r]
                        lo = (v & 15) | (np.int32((h >> j) & 1) << 4)
                        hi = (v >> 4) | (np.int32((h >> (j + 16)) & 1) << 4)
                        isum[r] += lo * xl + hi * xh
                f = xd[t, b]
                s = xs[t, b]
                for r in range(R):
                    acc[r] += d[g, b, r] * f * np.float32(isum[r]) + m[g, b, r] * s
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]


@nb.njit(**PJIT)
def mv_q8_0(qs, d, xq, xd, xs, y):
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
                    acc[r] += d[g, b, r] * f * np.float32(isum[r])
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]
