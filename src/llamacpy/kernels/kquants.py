"""Decode kernels for the k-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K on a row-interleaved repack.

Owns: `repack(typ, raw, n_out, n_in, R)` (once at load) and `mv_q2_k` .. `mv_q6_k` (numba, one call per
matrix, prange over groups of R rows). As in the legacy kernels, byte j of the R rows of a group sits contiguous
so the innermost loop runs across rows; the packed 6-bit sub-block scales/mins are unpacked to bytes (the f16
super-block scales stay f16, converted in the kernel). Arithmetic is llama.cpp's vec_dot_qK_q8_K: int32 sums
per sub-block times the integer sub-block scale, mins through the Q8_K block sums, f32 per super-block.

Layouts (G groups of R rows, nS = n_in / 256 super-blocks; zero rows pad the last group):
    Q4_K/Q5_K: qs (G, nS*4, 32, R) uint8 -- chunk c of 64 weights: byte l low nibble = weight l,
               high nibble = weight 32+l (ggml's own order); qh (G, nS, 32, R) uint8 bit s = 5th bit of
               weight 32*s+l (Q5_K); sc, mn (G, nS*8, R) uint8; d, dmin (G, nS, R) uint16 (f16 bits)
    Q6_K:      ql (G, nS*2, 64, R), qh (G, nS*2, 32, R) uint8 (ggml's order per 128-weight half);
               sc (G, nS*16, R) int8; d (G, nS, R) uint16 (f16 bits)
    Q3_K:      qs (G, nS*2, 32, R) uint8 (2-bit, ggml's order), hm (G, nS, 32, R) uint8 (hmask);
               sc (G, nS*16, R) int8 (6-bit scale - 32); d (G, nS, R) f16 bits
    Q2_K:      qs (G, nS*2, 32, R) uint8; scm (G, nS*16, R) uint8 (ggml's scale|min<<4 byte); d, dmin (G, nS, R)
Weight i = 128n + 32k + l of a super-block (Q2_K/Q3_K/Q6_K) sits in byte l of half n at bit offset 2k.
Must not: quantize activations (q8.py) or choose paths (linear.py).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .common import PJIT, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BLOCK, f16_bits_to_f32
from .legacy import _f16_bits, _il


def _f16_at(blk: np.ndarray, o: int) -> np.ndarray:
    return _f16_bits(blk, o)  # (n_out, nS) uint16 f16 bits


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
    if typ == Q3_K:
        hm = _il(blk[:, :, 0:32], n_out, R)  # (G, nS, 32, R)
        qs = _il(blk[:, :, 32:96].reshape(n_out, nS * 2, 32), n_out, R)
        s = blk[:, :, 96:108]
        lo = np.concatenate([s[..., 0:8] & 15, s[..., 0:8] >> 4], axis=-1)  # (n_out, nS, 16)
        hi = np.concatenate([(s[..., 8:12] >> (2 * k)) & 3 for k in range(4)], axis=-1)
        sc = ((lo | (hi << 4)).astype(np.int16) - 32).astype(np.int8).reshape(n_out, nS * 16)
        return qs, hm, _il(sc, n_out, R), _il(_f16_at(blk, 108), n_out, R)
    if typ == Q2_K:
        qs = _il(blk[:, :, 16:80].reshape(n_out, nS * 2, 32), n_out, R)
        scm = _il(blk[:, :, 0:16].reshape(n_out, nS * 16), n_out, R)  # low nibble scale, high nibble min
        return qs, scm, _il(_f16_at(blk, 80), n_out, R), _il(_f16_at(blk, 82), n_out, R)
    if typ == Q6_K:
        ql = _il(blk[:, :, 0:128].reshape(n_out, nS * 2, 64), n_out, R)
        qh = _il(blk[:, :, 128:192].reshape(n_out, nS * 2, 32), n_out, R)
        sc = _il(blk[:, :, 192:208].reshape(n_out, nS * 16).view(np.int8), n_out, R)
        return ql, qh, sc, _il(_f16_at(blk, 208), n_out, R)
    raise ValueError(typ)


# Loop order: for each run of weights, bytes outer and the R rows inner (vectorised), with int16 row sums in
# small arrays (L1). sum((q - off) * x) is exact in int16 -- wrap-around arithmetic, see legacy.py -- for 4-bit
# runs of 32 (off 8), 5-bit runs of 16 (off 16) and 6-bit runs of 8 (off 32); the offset is added back in int32,
# where llama.cpp multiplies the q*x sums by the integer sub-block scales. Measured (Q4_K 5632x2048, one thread):
# rows-inner int16 arrays 14.9 GB/s vs rows-outer with the run unrolled inside 5.6 GB/s (the run loop of the
# k-quants is not unrolled by LLVM, so the rows did not vectorise).
I16 = np.int16


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
        sA = np.empty(R, np.int16)
        sB = np.empty(R, np.int16)
        for t in range(n_tok):
            acc[:] = 0.0
            for S in range(nS):
                aS[:] = 0
                aM[:] = 0
                for c in range(4):
                    s0 = S * 8 + 2 * c
                    o = S * 256 + c * 64
                    bA = bsums[t, S * 16 + 4 * c] + bsums[t, S * 16 + 4 * c + 1]
                    bB = bsums[t, S * 16 + 4 * c + 2] + bsums[t, S * 16 + 4 * c + 3]
                    offA = I16(8 * bA)
                    offB = I16(8 * bB)
                    sA[:] = 0
                    sB[:] = 0
                    for l in range(32):
                        xa = I16(xq[t, o + l])
                        xb = I16(xq[t, o + 32 + l])
                        for r in range(R):
                            v = I16(qs[g, S * 4 + c, l, r])
                            sA[r] = I16(sA[r] + I16(I16(v & 15) * xa))
                            sB[r] = I16(sB[r] + I16(I16(v >> 4) * xb))
                    for r in range(R):
                        aS[r] += (np.int32(sc[g, s0, r]) * (np.int32(I16(sA[r] - offA)) + 8 * bA)
                                  + np.int32(sc[g, s0 + 1, r]) * (np.int32(I16(sB[r] - offB)) + 8 * bB))
                        aM[r] += np.int32(mn[g, s0, r]) * bA + np.int32(mn[g, s0 + 1, r]) * bB
                f = xd[t, S]
                for r in range(R):
                    acc[r] += f * (f16_bits_to_f32(d[g, S, r]) * np.float32(aS[r])
                                   - f16_bits_to_f32(dmin[g, S, r]) * np.float32(aM[r]))
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
        sA = np.empty(R, np.int16)
        sB = np.empty(R, np.int16)
        for t in range(n_tok):
            acc[:] = 0.0
            for S in range(nS):
                aS[:] = 0
                aM[:] = 0
                for c in range(4):
                    s0 = S * 8 + 2 * c
                    for hh in range(2):  # runs of 16
                        o = S * 256 + c * 64 + hh * 16
                        bA = bsums[t, S * 16 + 4 * c + hh]
                        bB = bsums[t, S * 16 + 4 * c + 2 + hh]
                        offA = I16(16 * bA)
                        offB = I16(16 * bB)
                        sA[:] = 0
                        sB[:] = 0
                        for l in range(16):
                            xa = I16(xq[t, o + l])
                            xb = I16(xq[t, o + 32 + l])
                            sh = 2 * c
                            for r in range(R):
                                v = I16(qs[g, S * 4 + c, hh * 16 + l, r])
                                h = I16(qh[g, S, hh * 16 + l, r]) >> sh
                                sA[r] = I16(sA[r] + I16((I16(v & 15) | I16((h & 1) << 4)) * xa))
                                sB[r] = I16(sB[r] + I16((I16(v >> 4) | I16((h & 2) << 3)) * xb))
                        for r in range(R):
                            aS[r] += (np.int32(sc[g, s0, r]) * (np.int32(I16(sA[r] - offA)) + 16 * bA)
                                      + np.int32(sc[g, s0 + 1, r]) * (np.int32(I16(sB[r] - offB)) + 16 * bB))
                    bA = bsums[t, S * 16 + 4 * c] + bsums[t, S * 16 + 4 * c + 1]
                    bB = bsums[t, S * 16 + 4 * c + 2] + bsums[t, S * 16 + 4 * c + 3]
                    for r in range(R):
                        aM[r] += np.int32(mn[g, s0, r]) * bA + np.int32(mn[g, s0 + 1, r]) * bB
                f = xd[t, S]
                for r in range(R):
                    acc[r] += f * (f16_bits_to_f32(d[g, S, r]) * np.float32(aS[r])
                                   - f16_bits_to_f32(dmin[g, S, r]) * np.float32(aM[r]))
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]


@nb.njit(**PJIT)
def mv_q6_k(ql, qh, sc, d, xq, xd, bsums, y):
    G, _, _, R = ql.shape
    nS = d.shape[1]
    n_tok, n_out = y.shape
    n_in = xq.shape[1]
    s8 = np.zeros((n_tok, n_in // 8), np.int32)  # activation sums per 8 (the offset-32 correction)
    for t in range(n_tok):
        for i in range(n_in):
            s8[t, i // 8] += np.int32(xq[t, i])
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        aS = np.empty(R, np.int32)
        i0 = np.empty(R, np.int16)
        i1 = np.empty(R, np.int16)
        i2 = np.empty(R, np.int16)
        i3 = np.empty(R, np.int16)
        for t in range(n_tok):
            acc[:] = 0.0
            for S in range(nS):
                aS[:] = 0
                for n in range(2):
                    h = S * 2 + n
                    o = S * 256 + n * 128
                    for lq in range(4):  # runs of 8
                        e = (o + lq * 8) // 8  # 8-sum index of weights o+lq*8..; k adds 4 (32 weights)
                        c0 = I16(32 * s8[t, e])
                        c1 = I16(32 * s8[t, e + 4])
                        c2 = I16(32 * s8[t, e + 8])
                        c3 = I16(32 * s8[t, e + 12])
                        sb = S * 16 + n * 8 + lq // 2  # scale of k=0; k adds 2
                        i0[:] = 0
                        i1[:] = 0
                        i2[:] = 0
                        i3[:] = 0
                        for l in range(lq * 8, lq * 8 + 8):
                            x0 = I16(xq[t, o + l])
                            x1 = I16(xq[t, o + 32 + l])
                            x2 = I16(xq[t, o + 64 + l])
                            x3 = I16(xq[t, o + 96 + l])
                            for r in range(R):
                                a = I16(ql[g, h, l, r])
                                b = I16(ql[g, h, 32 + l, r])
                                hb = I16(qh[g, h, l, r])
                                i0[r] = I16(i0[r] + I16((I16(a & 15) | I16((hb & 3) << 4)) * x0))
                                i1[r] = I16(i1[r] + I16((I16(b & 15) | I16((hb & 12) << 2)) * x1))
                                i2[r] = I16(i2[r] + I16((I16(a >> 4) | I16(hb & 48)) * x2))
                                i3[r] = I16(i3[r] + I16((I16(b >> 4) | I16((hb & 192) >> 2)) * x3))
                        for r in range(R):
                            aS[r] += (np.int32(sc[g, sb, r]) * np.int32(I16(i0[r] - c0))
                                      + np.int32(sc[g, sb + 2, r]) * np.int32(I16(i1[r] - c1))
                                      + np.int32(sc[g, sb + 4, r]) * np.int32(I16(i2[r] - c2))
                                      + np.int32(sc[g, sb + 6, r]) * np.int32(I16(i3[r] - c3)))
                f = xd[t, S]
                for r in range(R):
                    acc[r] += f * f16_bits_to_f32(d[g, S, r]) * np.float32(aS[r])
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]


@nb.njit(**PJIT)
def mv_q3_k(qs, hm, sc, d, xq, xd, bsums, y):
    """3-bit u = q2 | hbit << 2 in 0..7 (ggml's q = u - 4): sums of u*x over 16 fit int16 without wrapping."""
    G, _, _, R = qs.shape
    nS = d.shape[1]
    n_tok, n_out = y.shape
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        aS = np.empty(R, np.int32)
        i0 = np.empty(R, np.int16)
        i1 = np.empty(R, np.int16)
        i2 = np.empty(R, np.int16)
        i3 = np.empty(R, np.int16)
        for t in range(n_tok):
            acc[:] = 0.0
            for S in range(nS):
                aS[:] = 0
                for n in range(2):
                    h = S * 2 + n
                    o = S * 256 + n * 128
                    hs = 4 * n
                    for lh in range(2):
                        sb = S * 16 + n * 8 + lh  # sub-block (scale and Q8_K sum) of k=0; k adds 2
                        c0 = 4 * bsums[t, sb]
                        c1 = 4 * bsums[t, sb + 2]
                        c2 = 4 * bsums[t, sb + 4]
                        c3 = 4 * bsums[t, sb + 6]
                        i0[:] = 0
                        i1[:] = 0
                        i2[:] = 0
                        i3[:] = 0
                        for l in range(lh * 16, lh * 16 + 16):
                            x0 = I16(xq[t, o + l])
                            x1 = I16(xq[t, o + 32 + l])
                            x2 = I16(xq[t, o + 64 + l])
                            x3 = I16(xq[t, o + 96 + l])
                            for r in range(R):
                                q = I16(qs[g, h, l, r])
                                m = I16(hm[g, S, l, r]) >> hs
                                i0[r] = I16(i0[r] + I16((I16(q & 3) | I16((m & 1) << 2)) * x0))
                                i1[r] = I16(i1[r] + I16((I16((q >> 2) & 3) | I16(m & 2) << 1) * x1))
                                i2[r] = I16(i2[r] + I16((I16((q >> 4) & 3) | I16(m & 4)) * x2))
                                i3[r] = I16(i3[r] + I16((I16(q >> 6) | I16((m & 8) >> 1)) * x3))
                        for r in range(R):
                            aS[r] += (np.int32(sc[g, sb, r]) * (np.int32(i0[r]) - c0)
                                      + np.int32(sc[g, sb + 2, r]) * (np.int32(i1[r]) - c1)
                                      + np.int32(sc[g, sb + 4, r]) * (np.int32(i2[r]) - c2)
                                      + np.int32(sc[g, sb + 6, r]) * (np.int32(i3[r]) - c3))
                f = xd[t, S]
                for r in range(R):
                    acc[r] += f * f16_bits_to_f32(d[g, S, r]) * np.float32(aS[r])
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]


@nb.njit(**PJIT)
def mv_q2_k(qs, scm, d, dmin, xq, xd, bsums, y):
    """w = d*sc*q - dmin*m per 16 weights: d*sum(sc * sum(q*x)) - dmin*sum(m * bsum), q*x sums in int16."""
    G, _, _, R = qs.shape
    nS = d.shape[1]
    n_tok, n_out = y.shape
    for g in nb.prange(G):
        acc = np.empty(R, np.float32)
        aS = np.empty(R, np.int32)
        aM = np.empty(R, np.int32)
        i0 = np.empty(R, np.int16)
        i1 = np.empty(R, np.int16)
        i2 = np.empty(R, np.int16)
        i3 = np.empty(R, np.int16)
        for t in range(n_tok):
            acc[:] = 0.0
            for S in range(nS):
                aS[:] = 0
                aM[:] = 0
                for j in range(16):
                    bj = bsums[t, S * 16 + j]
                    for r in range(R):
                        aM[r] += np.int32(scm[g, S * 16 + j, r] >> 4) * bj
                for n in range(2):
                    h = S * 2 + n
                    o = S * 256 + n * 128
                    for lh in range(2):
                        sb = S * 16 + n * 8 + lh
                        i0[:] = 0
                        i1[:] = 0
                        i2[:] = 0
                        i3[:] = 0
                        for l in range(lh * 16, lh * 16 + 16):
                            x0 = I16(xq[t, o + l])
                            x1 = I16(xq[t, o + 32 + l])
                            x2 = I16(xq[t, o + 64 + l])
                            x3 = I16(xq[t, o + 96 + l])
                            for r in range(R):
                                q = I16(qs[g, h, l, r])
                                i0[r] = I16(i0[r] + I16(I16(q & 3) * x0))
                                i1[r] = I16(i1[r] + I16(I16((q >> 2) & 3) * x1))
                                i2[r] = I16(i2[r] + I16(I16((q >> 4) & 3) * x2))
                                i3[r] = I16(i3[r] + I16(I16(q >> 6) * x3))
                        for r in range(R):
                            aS[r] += (np.int32(scm[g, sb, r] & 15) * np.int32(i0[r])
                                      + np.int32(scm[g, sb + 2, r] & 15) * np.int32(i1[r])
                                      + np.int32(scm[g, sb + 4, r] & 15) * np.int32(i2[r])
                                      + np.int32(scm[g, sb + 6, r] & 15) * np.int32(i3[r]))
                f = xd[t, S]
                for r in range(R):
                    acc[r] += f * (f16_bits_to_f32(d[g, S, r]) * np.float32(aS[r])
                                   - f16_bits_to_f32(dmin[g, S, r]) * np.float32(aM[r]))
            for r in range(min(R, n_out - g * R)):
                y[t, g * R + r] = acc[r]
