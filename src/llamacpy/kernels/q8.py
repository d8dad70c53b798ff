"""Activation quantization, exactly as llama.cpp's CPU backend does it before an integer dot product.

Owns: Q8_0/Q8_1 (blocks of 32: amax/127 scale stored as f16, values rint(x * 127/amax), the AVX2 path of
`quantize_row_q8_0/q8_1`) and Q8_K (blocks of 256: the signed value of largest magnitude `max`,
iscale = -127/max, q = min(127, nearest_int(iscale*x)), d = 1/iscale kept in f32, sums per 16: the reference
`quantize_row_q8_K_ref`, which is what x86 builds run). Also the "fake-quantized" activations d*q in f32 that
the prompt-processing path feeds to sgemm, so that both paths see the same activation values.

Must not: know weight layouts. No fastmath here: the rounding must match llama.cpp bit for bit.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .common import f32_round_f16


_QJIT = dict(cache=True, nogil=True)  # no fastmath: division and rounding must stay IEEE


@nb.njit(inline="always", **_QJIT)
def _amax32(x, t, o):
    """max |x[t, o:o+32]| (0 if none is > 0; NaNs skipped): four partial maxima, so the compares are not one
    32-long dependency chain (the maximum of the same values: the same bits)."""
    m0 = np.float32(0.0)
    m1 = np.float32(0.0)
    m2 = np.float32(0.0)
    m3 = np.float32(0.0)
    for j in range(0, 32, 4):
        a = abs(x[t, o + j])
        if a > m0:
            m0 = a
        a = abs(x[t, o + j + 1])
        if a > m1:
            m1 = a
        a = abs(x[t, o + j + 2])
        if a > m2:
            m2 = a
        a = abs(x[t, o + j + 3])
        if a > m3:
            m3 = a
    if m1 > m0:
        m0 = m1
    if m3 > m2:
        m2 = m3
    if m2 > m0:
        m0 = m2
    return m0


@nb.njit(**_QJIT)
def _q8_0(x):
    """x (n, k) f32 -> qx (n, k) int8, dx (n, k/32) f32 (f16-exact scale amax/127), sx (n, k/32) f32 (Q8_1's
    s = f16(d * sum q) with the unrounded d, as ggml's quantize_row_q8_1). f16 rounding: f32_round_f16 (ggml's
    FP32_TO_FP16 on x86: nearest-even, inf past 65504)."""
    n, k = x.shape
    nb_ = k // 32
    qx = np.empty((n, k), np.int8)
    dx = np.empty((n, nb_), np.float32)
    sx = np.empty((n, nb_), np.float32)
    for t in range(n):
        for b in range(nb_):
            amax = _amax32(x, t, b * 32)
            d = amax / np.float32(127.0)
            iscale = np.float32(127.0) / amax if amax != 0.0 else np.float32(0.0)
            s = 0
            for j in range(32):
                q = np.int32(np.rint(x[t, b * 32 + j] * iscale))
                qx[t, b * 32 + j] = q
                s += q
            dx[t, b] = f32_round_f16(d)
            sx[t, b] = f32_round_f16(d * np.float32(s))
    return qx, dx, sx


def quantize_q8_0(x: np.ndarray):
    """x (n, k) float32, k % 32 == 0 -> (qx int8 (n, k), dx f32 (n, k/32) f16-exact, sx f32 (n, k/32)).
    sx = f16(d * sum(q)) is Q8_1's `s` (used by Q4_1/Q5_1 for the min term)."""
    return _q8_0(x)


@nb.njit(inline="always", **_QJIT)
def _amax_signed256(x, t, o):
    """(max |x[t, o:o+256]|, the signed value of its first occurrence) -- (0, 0) if none is > 0, NaNs skipped
    -- as one forward scan with a strict > finds them; four partial scans over interleaved positions, merged
    by value, then by the earliest position (the same bits as the single scan)."""
    m0 = np.float32(0.0)
    m1 = np.float32(0.0)
    m2 = np.float32(0.0)
    m3 = np.float32(0.0)
    i0 = i1 = i2 = i3 = 0
    for j in range(0, 256, 4):
        a = abs(x[t, o + j])
        if a > m0:
            m0, i0 = a, j
        a = abs(x[t, o + j + 1])
        if a > m1:
            m1, i1 = a, j + 1
        a = abs(x[t, o + j + 2])
        if a > m2:
            m2, i2 = a, j + 2
        a = abs(x[t, o + j + 3])
        if a > m3:
            m3, i3 = a, j + 3
    if m1 > m0 or (m1 == m0 and i1 < i0):
        m0, i0 = m1, i1
    if m3 > m2 or (m3 == m2 and i3 < i2):
        m2, i2 = m3, i3
    if m2 > m0 or (m2 == m0 and i2 < i0):
        m0, i0 = m2, i2
    if m0 == 0.0:
        return np.float32(0.0), np.float32(0.0)
    return m0, x[t, o + i0]


@nb.njit(**_QJIT)
def _q8_k(x):
    """x (n, k) f32 -> qx (n, k) int8, d (n, k/256) f32, bsums (n, k/16) int32."""
    n, k = x.shape
    qx = np.empty((n, k), np.int8)
    d = np.empty((n, k // 256), np.float32)
    bsums = np.empty((n, k // 16), np.int32)
    for t in range(n):
        for b in range(k // 256):
            o = b * 256
            amax, mx = _amax_signed256(x, t, o)
            if amax == 0.0:
                d[t, b] = 0.0
                for j in range(256):
                    qx[t, o + j] = 0
                for j in range(16):
                    bsums[t, b * 16 + j] = 0
                continue
            iscale = np.float32(-127.0) / mx
            for j in range(16):
                s = 0
                for i in range(16):
                    q = np.int32(np.rint(iscale * x[t, o + j * 16 + i]))
                    if q > 127:
                        q = 127
                    qx[t, o + j * 16 + i] = q
                    s += q
                bsums[t, b * 16 + j] = s
            d[t, b] = np.float32(1.0) / iscale
    return qx, d, bsums


def quantize_q8_k(x: np.ndarray):
    """x (n, k) float32, k % 256 == 0 -> (qx int8 (n, k), d f32 (n, k/256), bsums int32 (n, k/16))."""
    return _q8_k(x)


def fake_quant_q8_0(x: np.ndarray) -> np.ndarray:
    """Activations as llama.cpp's Q8_0 sees them, in f32: dx * qx.  (n, k) -> (n, k)"""
    qx, dx, _ = quantize_q8_0(x)
    n, k = x.shape
    return (qx.reshape(n, k // 32, 32).astype(np.float32) * dx[:, :, None]).reshape(n, k)


def fake_quant_q8_k(x: np.ndarray) -> np.ndarray:
    """Activations as llama.cpp's Q8_K sees them, in f32: d * qx.  (n, k) -> (n, k)"""
    qx, d, _ = quantize_q8_k(x)
    n, k = x.shape
    return (qx.reshape(n, k // 256, 256).astype(np.float32) * d[:, :, None]).reshape(n, k)
