"""Dequantization of ggml blocks to float32, in numba, for every supported quantized type.

Owns: the per-type block decoders (one row at a time), `dequant_rows` (embedding lookups and f32 weight tiles
for the prompt-processing GEMM) and `matvec_generic` (decode for the types without a repacked kernel:
dequantize a row into a scratch vector, dot it with the already Q8-rounded activations).

Block layouts follow ggml (ggml-common.h); gguf.quants.dequantize is the test oracle.
Must not: quantize activations or choose between paths (linear.py does).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .common import JIT, PJIT, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K


@nb.njit(inline="always", **JIT)
def _f16(row, o, tab):
    """float16 at byte offset o of a uint8 row, as float32 (through the 65536-entry table)."""
    return tab[np.int32(row[o]) | (np.int32(row[o + 1]) << 8)]


@nb.njit(**JIT)
def _dq_q4_0(row, out, tab):
    for b in range(out.shape[0] // 32):
        o = b * 18
        d = _f16(row, o, tab)
        for j in range(16):
            v = np.int32(row[o + 2 + j])
            out[b * 32 + j] = d * np.float32((v & 15) - 8)
            out[b * 32 + 16 + j] = d * np.float32((v >> 4) - 8)


@nb.njit(**JIT)
def _dq_q4_1(row, out, tab):
    for b in range(out.shape[0] // 32):
        o = b * 20
        d = _f16(row, o, tab)
        m = _f16(row, o + 2, tab)
        for j in range(16):
            v = np.int32(row[o + 4 + j])
            out[b * 32 + j] = d * np.float32(v & 15) + m
            out[b * 32 + 16 + j] = d * np.float32(v >> 4) + m


@nb.njit(**JIT)
def _dq_q5_0(row, out, tab):
    for b in range(out.shape[0] // 32):
        o = b * 22
        d = _f16(row, o, tab)
        qh = (np.uint32(row[o + 2]) | (np.uint32(row[o + 3]) << 8) | (np.uint32(row[o + 4]) << 16)
              | (np.uint32(row[o + 5]) << 24))
        for j in range(16):
            v = np.int32(row[o + 6 + j])
            h0 = np.int32((qh >> j) & 1) << 4
            h1 = np.int32((qh >> (j + 16)) & 1) << 4
            out[b * 32 + j] = d * np.float32(((v & 15) | h0) - 16)
            out[b * 32 + 16 + j] = d * np.float32(((v >> 4) | h1) - 16)


@nb.njit(**JIT)
def _dq_q5_1(row, out, tab):
    for b in range(out.shape[0] // 32):
        o = b * 24
        d = _f16(row, o, tab)
        m = _f16(row, o + 2, tab)
        qh = (np.uint32(row[o + 4]) | (np.uint32(row[o + 5]) << 8) | (np.uint32(row[o + 6]) << 16)
              | (np.uint32(row[o + 7]) << 24))
        for j in range(16):
            v = np.int32(row[o + 8 + j])
            h0 = np.int32((qh >> j) & 1) << 4
            h1 = np.int32((qh >> (j + 16)) & 1) << 4
            out[b * 32 + j] = d * np.float32((v & 15) | h0) + m
            out[b * 32 + 16 + j] = d * np.float32((v >> 4) | h1) + m


@nb.njit(**JIT)
def _dq_q8_0(row, out, tab):
    for b in range(out.shape[0] // 32):
        o = b * 34
        d = _f16(row, o, tab)
        for j in range(32):
            out[b * 32 + j] = d * np.float32(np.int8(row[o + 2 + j]))


@nb.njit(inline="always", **JIT)
def _scale_min_k4(sc, j, row, o):
    """6-bit scale (sc=True) or min of sub-block j (0..7) from the 12 packed bytes at row[o:o+12] (Q4_K/Q5_K)."""
    base = 0 if sc else 4
    if j < 4:
        return np.int32(row[o + base + j]) & 63
    lo = np.int32(row[o + 8 + j - 4])
    lo = (lo & 15) if sc else (lo >> 4)
    return lo | ((np.int32(row[o + base + j - 4]) >> 6) << 4)


@nb.njit(**JIT)
def _dq_q4_k(row, out, tab):
    for b in range(out.shape[0] // 256):
        o = b * 144
        d = _f16(row, o, tab)
        dmin = _f16(row, o + 2, tab)
        for c in range(4):
            for h in range(2):
                sb = 2 * c + h
                s = d * np.float32(_scale_min_k4(True, sb, row, o + 4))
                m = dmin * np.float32(_scale_min_k4(False, sb, row, o + 4))
                for l in range(32):
                    q = (np.int32(row[o + 16 + c * 32 + l]) >> (4 * h)) & 15
                    out[b * 256 + sb * 32 + l] = s * np.float32(q) - m


@nb.njit(**JIT)
def _dq_q5_k(row, out, tab):
    for b in range(out.shape[0] // 256):
        o = b * 176
        d = _f16(row, o, tab)
        dmin = _f16(row, o + 2, tab)
        for c in range(4):
            for h in range(2):
                sb = 2 * c + h
                s = d * np.float32(_scale_min_k4(True, sb, row, o + 4))
                m = dmin * np.float32(_scale_min_k4(False, sb, row, o + 4))
                for l in range(32):
                    q = ((np.int32(row[o + 48 + c * 32 + l]) >> (4 * h)) & 15) | (
                        ((np.int32(row[o + 16 + l]) >> sb) & 1) << 4)
                    out[b * 256 + sb * 32 + l] = s * np.float32(q) - m


@nb.njit(**JIT)
def _dq_q6_k(row, out, tab):
    for b in range(out.shape[0] // 256):
        o = b * 210
        d = _f16(row, o + 208, tab)
        for n in range(2):
            for k in range(4):  # 32-weight quarter k of half n: ql nibble (k & 1) of bytes (k >> 1)*32.., qh bits 2k
                for l in range(32):
                    i = n * 128 + k * 32 + l
                    ql = (np.int32(row[o + n * 64 + (k & 1) * 32 + l]) >> (4 * (k >> 1))) & 15
                    qh = (np.int32(row[o + 128 + n * 32 + l]) >> (2 * k)) & 3
                    sc = np.float32(np.int8(row[o + 192 + i // 16]))
                    out[b * 256 + i] = d * sc * np.float32((ql | (qh << 4)) - 32)


@nb.njit(**JIT)
def _dq_q3_k(row, out, tab):
    for b in range(out.shape[0] // 256):
        o = b * 110
        d = _f16(row, o + 108, tab)
        for n in range(2):
            for k in range(4):
                for half in range(2):  # two 16-weight sub-blocks per 32-weight run
                    i0 = n * 128 + k * 32 + half * 16
                    s = i0 // 16
                    lo = (np.int32(row[o + 96 + (s % 8)]) >> (4 * (s // 8))) & 15
                    hi = (np.int32(row[o + 104 + (s % 4)]) >> (2 * (s // 4))) & 3
                    dl = d * np.float32((lo | (hi << 4)) - 32)
                    for l in range(half * 16, half * 16 + 16):
                        q = (np.int32(row[o + 32 + n * 32 + l]) >> (2 * k)) & 3
                        hbit = (np.int32(row[o + l]) >> (4 * n + k)) & 1
                        out[b * 256 + n * 128 + k * 32 + l] = dl * np.float32(q - 4 + 4 * hbit)


@nb.njit(**JIT)
def _dq_q2_k(row, out, tab):
    for b in range(out.shape[0] // 256):
        o = b * 84
        d = _f16(row, o + 80, tab)
        dmin = _f16(row, o + 82, tab)
        for n in range(2):
            for k in range(4):
                for half in range(2):
                    i0 = n * 128 + k * 32 + half * 16
                    sc = np.int32(row[o + i0 // 16])
                    dl = d * np.float32(sc & 15)
                    ml = dmin * np.float32(sc >> 4)
                    for l in range(half * 16, half * 16 + 16):
                        q = (np.int32(row[o + 16 + n * 32 + l]) >> (2 * k)) & 3
                        out[b * 256 + n * 128 + k * 32 + l] = dl * np.float32(q) - ml


@nb.njit(inline="always", **JIT)
def _dq_row(typ, row, out, tab):
    if typ == Q4_0:
        _dq_q4_0(row, out, tab)
    elif typ == Q4_1:
        _dq_q4_1(row, out, tab)
    elif typ == Q5_0:
        _dq_q5_0(row, out, tab)
    elif typ == Q5_1:
        _dq_q5_1(row, out, tab)
    elif typ == Q8_0:
        _dq_q8_0(row, out, tab)
    elif typ == Q2_K:
        _dq_q2_k(row, out, tab)
    elif typ == Q3_K:
        _dq_q3_k(row, out, tab)
    elif typ == Q4_K:
        _dq_q4_k(row, out, tab)
    elif typ == Q5_K:
        _dq_q5_k(row, out, tab)
    elif typ == Q6_K:
        _dq_q6_k(row, out, tab)


@nb.njit(**PJIT)
def dequant_rows(typ, raw, ids, out, tab):
    """out[i] = dequantized raw[ids[i]].  raw: (n_rows, bytes_per_row) uint8; ids: (n,) int64; out: (n, n_in) f32"""
    for i in nb.prange(ids.shape[0]):
        _dq_row(typ, raw[ids[i]], out[i], tab)


@nb.njit(**PJIT)
def dequant_range(typ, raw, r0, out, tab):
    """out[i] = dequantized raw[r0 + i] (a contiguous tile).  out: (n, n_in) f32"""
    for i in nb.prange(out.shape[0]):
        _dq_row(typ, raw[r0 + i], out[i], tab)


@nb.njit(**PJIT)
def matvec_generic(typ, raw, xh, y, tab):
    """y[t, r] = dot(dequant(raw[r]), xh[t]) for the few-token decode path of types without a repacked kernel.
    raw: (n_out, bytes_per_row) uint8; xh: (n_tok, n_in) f32 (Q8-rounded activations); y: (n_tok, n_out)"""
    n_out = raw.shape[0]
    n_tok, n_in = xh.shape
    CH = 16
    for c in nb.prange((n_out + CH - 1) // CH):
        w = np.empty(n_in, np.float32)
        for r in range(c * CH, min(n_out, c * CH + CH)):
            _dq_row(typ, raw[r], w, tab)
            for t in range(n_tok):
                s = np.float32(0.0)
                for i in range(n_in):
                    s += w[i] * xh[t, i]
                y[t, r] = s


@nb.njit(**PJIT)
def dequant_range_split_min(typ, raw, r0, out, mins, tab):
    """Q4_1/Q5_1 tile without the min: out[i] = d*q of row r0+i (n, n_in); mins[i, b] = m of block b (n, nb).
    The prompt path adds the min term as llama.cpp does, m * s with Q8_1's s = f16(dx * sum q) per block."""
    for i in nb.prange(out.shape[0]):
        row = raw[r0 + i]
        _dq_row(typ, row, out[i], tab)
        bs = 20 if typ == Q4_1 else 24
        for b in range(mins.shape[1]):
            m = _f16(row, b * bs + 2, tab)
            mins[i, b] = m
            for j in range(32):
                out[i, b * 32 + j] -= m
