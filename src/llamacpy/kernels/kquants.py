"""Decode kernels for the k-quants Q4_K, Q5_K, Q6_K on a row-interleaved repack (Q2_K and Q3_K take the
generic dequantize-and-dot path in dequant.py).

Owns: `repack(typ, raw, n_out, n_in, R)` (numpy, once at load) and `mv_q4_k/mv_q5_k/mv_q6_k` (numba, one call
per matrix, prange over groups of R rows). As in the legacy kernels, byte j of the R rows of a group sits
contiguous so the innermost loop runs across rows; the packed 6-bit sub-block scales/mins are unpacked to bytes
and the f16 super-block scales to f32 at repack. Arithmetic is llama.cpp's vec_dot_qK_q8_K: int32 sums per
sub-block times the integer sub-block scale, mins through the Q8_K block sums, f32 per super-block.

Layouts (G groups of R rows, nS = n_in / 256 super-blocks; zero rows pad the last group):
    Q4_K/Q5_K: qs (G, nS*4, 32, R) uint8 -- chunk c of 64 weights: byte l low nibble = weight l,
               high nibble = weight 32+l (ggml's own order); qh (G, nS, 32, R) uint8 bit s = 5th bit of
               weight 32*s+l (Q5_K); sc, mn (G, nS*8, R) uint8; d, dmin (G, nS, R) f32
    Q6_K:      ql (G, nS*2, 64, R), qh (G, nS*2, 32, R) uint8 (ggml's order per 128-weight half);
               sc (G, nS*16, R) int8; d (G, nS, R) f32
Must not: quantize activations (q8.py) or choose paths (linear.py).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .common import PJIT, Q4_K, Q5_K, Q6_K, BLOCK
from .legacy import _groups


def _il(a: np.ndarray, n_out: int, R: int) -> np.ndarray:
    """(n_out, A, ...) -> (G, A, ..., R) contiguous."""
    g = _groups(a, n_out, R)
    return np.ascontiguousarray(np.moveaxis(g, 1, -1))


def _f16_at(blk: np.ndarray, o: int) -> np.ndarray:
    return np.ascontiguousarray(blk[:, :, o:o + 2]).view(np.float16)[:, :, 0].astype(np.float32)  # (n_out, nS)


def _scale_min_k4(s: np.ndarray):
    """12 packed bytes (n_out, nS, 12) -> 6-bit scales and mins (n_out, nS, 8) uint8."""
    d, m, md = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = np.concatenate([d & 63, (md & 15) | ((d >> 2) & 48)], axis=-1)
    mn = np.concatenate([m & 63, (md >> 4) | ((m >> 2) & 48)], axis=-1)
    return sc, mn


def repack(typ: int, raw: np.ndarray, n_out: int, n_in: int, R: int) -> tuple:
    nS = n_in // 256
    blk = raw.reshape(n_out, nS, BLOCK[typ][1])
    if typ in (Q4_K, Q5_K):
        sc, mn = _scale_min_k4(blk[:, :, 4:16])
        qo = 16 if typ == Q4_K else 48
        qs = _il(blk[:, :, qo:qo + 128].reshape(n_out, nS * 4, 32), n_out, R)
        out = (qs, _il(sc.reshape(n_out, nS * 8), n_out, R), _il(mn.reshape(n_out, nS * 8), n_out, R),
               _il(_f16_at(blk, 0), n_out, R), _il(_f16_at(blk, 2), n_out, R))
        if typ == Q5_K:
            out = (out[0], _il(blk[:, :, 16:48], n_out, R)) + out[1:]
        return out
    if typ == Q6_K:
        ql = _il(blk[:, :, 0:128].reshape(n_out, nS * 2, 64), n_out, R)
        qh = _il(blk[:, :, 128:192].reshape(n_out, nS * 2, 32), n_out, R)
        sc = _il(blk[:, :, 192:208].reshape(n_out, nS * 16).view(np.int8), n_out, R)
        return ql, qh, sc, _il(_f16_at(blk, 208), n_out, R)
    raise ValueError(typ)


@nb.njit(**PJIT)
def mv_q4_k(qs, sc, mn, d, dmin, xq, xd, bsums, y):
    """y (n_tok, n_out) = W @ x.  xq (n_tok, n_in) int8, xd (n_tok, nS) f32, bsums (n_tok, nS*16) int32 (Q8_K)."""
    G, _, _, R = qs.shape
    nS = d.shape[1]
    n_tok, n_out = y.shape
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        aS = np.empty(R, np.int32)
        aM = np.empty(R, np.int32)
        iA = np.empty(R, np.int32)
        iB = np.empty(R, np.int32)
        for t in range(n_tok):
            acc[:] = 0.0
            for S in range(nS):
                aS[:] = 0
                aM[:] = 0
                for c in range(4):
                    iA[:] = 0
                    iB[:] = 0
                    o = S * 256 + c * 64
                    for l in range(32):
                        xa = np.int32(xq[t, o + l])
                        xb = np.int32(xq[t, o + 32 + l])
                        for r in range(R):
                            v = np.int32(qs[g, S * 4 + c, l, r])
                            iA[r] += (v & 15) * xa
                            iB[r] += (v >> 4) * xb
                    s0 = S * 8 + 2 * c
                    b0 = bsums[t, S * 16 + 4 * c] + bsums[t, S * 16 + 4 * c + 1]
                    b1 = bsums[t, S * 16 + 4 * c + 2] + bsums[t, S * 16 + 4 * c + 3]
                    for r in range(R):
                        aS[r] += np.int32(sc[g, s0, r]) * iA[r] + np.int32(sc[g, s0 + 1, r]) * iB[r]
                        aM[r] += np.int32(mn[g, s0, r]) * b0 + np.int32(mn[g, s0 + 1, r]) * b1
                f = xd[t, S]
                for r in range(R):
                    acc[r] += f * (d[g, S, r] * np.float32(aS[r]) - dmin[g, S, r] * np.float32(aM[r]))
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]


@nb.njit(**PJIT)
def mv_q5_k(qs, qh, sc, mn, d, dmin, xq, xd, bsums, y):
    G, _, _, R = qs.shape
    nS = d.shape[1]
    n_tok, n_out = y.shape
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        aS = np.empty(R, np.int32)
        aM = np.empty(R, np.int32)
        iA = np.empty(R, np.int32)
        iB = np.empty(R, np.int32)
        for t in range(n_tok):
            acc[:] = 0.0
            for S in range(nS):
                aS[:] = 0
                aM[:] = 0
                for c in range(4):
                    iA[:] = 0
                    iB[:] = 0
                    o = S * 256 + c * 64
                    for l in range(32):
                        xa = np.int32(xq[t, o + l])
                        xb = np.int32(xq[t, o + 32 + l])
                        for r in range(R):
                            v = np.int32(qs[g, S * 4 + c, l, r])
                            h = np.int32(qh[g, S, l, r]) >> (2 * c)
                            iA[r] += ((v & 15) | ((h & 1) << 4)) * xa
                            iB[r] += ((v >> 4) | ((h & 2) << 3)) * xb
                    s0 = S * 8 + 2 * c
                    b0 = bsums[t, S * 16 + 4 * c] + bsums[t, S * 16 + 4 * c + 1]
                    b1 = bsums[t, S * 16 + 4 * c + 2] + bsums[t, S * 16 + 4 * c + 3]
                    for r in range(R):
                        aS[r] += np.int32(sc[g, s0, r]) * iA[r] + np.int32(sc[g, s0 + 1, r]) * iB[r]
                        aM[r] += np.int32(mn[g, s0, r]) * b0 + np.int32(mn[g, s0 + 1, r]) * b1
                f = xd[t, S]
                for r in range(R):
                    acc[r] += f * (d[g, S, r] * np.float32(aS[r]) - dmin[g, S, r] * np.float32(aM[r]))
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]


@nb.njit(**PJIT)
def mv_q6_k(ql, qh, sc, d, xq, xd, bsums, y):
    G, _, _, R = ql.shape
    nS = d.shape[1]
    n_tok, n_out = y.shape
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        aS = np.empty(R, np.int32)
        i0 = np.empty(R, np.int32)
        i1 = np.empty(R, np.int32)
        i2 = np.empty(R, np.int32)
        i3 = np.empty(R, np.int32)
        for t in range(n_tok):
            acc[:] = 0.0
            for S in range(nS):
                aS[:] = 0
                for n in range(2):
                    h = S * 2 + n
                    o = S * 256 + n * 128
                    for lh in range(2):
                        i0[:] = 0
                        i1[:] = 0
                        i2[:] = 0
                        i3[:] = 0
                        for l in range(lh * 16, lh * 16 + 16):
                            x0 = np.int32(xq[t, o + l])
                            x1 = np.int32(xq[t, o + 32 + l])
                            x2 = np.int32(xq[t, o + 64 + l])
                            x3 = np.int32(xq[t, o + 96 + l])
                            for r in range(R):
                                a = np.int32(ql[g, h, l, r])
                                b = np.int32(ql[g, h, 32 + l, r])
                                hb = np.int32(qh[g, h, l, r])
                                i0[r] += ((a & 15) | ((hb & 3) << 4)) * x0
                                i1[r] += ((b & 15) | ((hb & 12) << 2)) * x1
                                i2[r] += ((a >> 4) | (hb & 48)) * x2
                                i3[r] += ((b >> 4) | ((hb & 192) >> 2)) * x3
                        sb = S * 16 + n * 8 + lh  # scale index of k=0; k adds 2
                        c0 = 32 * bsums[t, sb]
                        c1 = 32 * bsums[t, sb + 2]
                        c2 = 32 * bsums[t, sb + 4]
                        c3 = 32 * bsums[t, sb + 6]
                        for r in range(R):
                            aS[r] += (np.int32(sc[g, sb, r]) * (i0[r] - c0) + np.int32(sc[g, sb + 2, r]) * (i1[r] - c1)
                                      + np.int32(sc[g, sb + 4, r]) * (i2[r] - c2)
                                      + np.int32(sc[g, sb + 6, r]) * (i3[r] - c3))
                f = xd[t, S]
                for r in range(R):
                    acc[r] += f * d[g, S, r] * np.float32(aS[r])
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]
