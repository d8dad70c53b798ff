"""Activation quantization, exactly as llama.cpp's CPU backend does it before an integer dot product.

Owns: Q8_0/Q8_1 (blocks of 32: amax/127 scale stored as f16, values rint(x * 127/amax), the AVX2 path of
`quantize_row_q8_0/q8_1`) and Q8_K (blocks of 256: the signed value of largest magnitude `max`,
iscale = -127/max, q = min(127, nearest_int(iscale*x)), d = 1/iscale kept in f32, sums per 16: the reference
`quantize_row_q8_K_ref`, which is what x86 builds run). Also the "fake-quantized" activations d*q in f32 that
the prompt-processing path feeds to sgemm, so that both paths see the same activation values.

Must not: know weight layouts. No fastmath here: the rounding must match llama.cpp bit for bit.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np


_QJIT = dict(cache=True, nogil=True)  # no fastmath: division and rounding must stay IEEE


@nb.njit(inline="always", **_QJIT)
def _round_f16(x):
    """float32 x rounded to the nearest float16 value (ties to even), as float32 (no overflow handling:
    block scales are far below 65504)."""
    if x == 0.0:
        return np.float32(0.0)
    m, e = math.frexp(np.float64(x))  # x = m * 2**e, 0.5 <= |m| < 1; f16 keeps 11 significant bits
    ulp = max(e - 11, -24)  # f16 subnormals have a fixed ulp of 2**-24
    return np.float32(np.rint(np.float64(x) * 2.0 ** (-ulp)) * 2.0 ** ulp)


@nb.njit(**_QJIT)
def _q8_0(x):
    """x (n, k) f32 -> qx (n, k) int8, dx (n, k/32) f32 (f16-exact scale amax/127), sx (n, k/32) f32 (Q8_1's
    s = f16(d * sum q) with the unrounded d, as ggml's quantize_row_q8_1)."""
    n, k = x.shape
    nb_ = k // 32
    qx = np.empty((n, k), np.int8)
    dx = np.empty((n, nb_), np.float32)
    sx = np.empty((n, nb_), np.float32)
    for t in range(n):
        for b in range(nb_):
            amax = np.float32(0.0)
            for j in range(32):
                a = abs(x[t, b * 32 + j])
                if a > amax:
                    amax = a
            d = amax / np.float32(127.0)
            iscale = np.float32(127.0) / amax if amax != 0.0 else np.float32(0.0)
            s = 0
            for j in range(32):
                q = np.int32(np.rint(x[t, b * 32 + j] * iscale))
                qx[t, b * 32 + j] = q
                s += q
            dx[t, b] = _round_f16(d)
            sx[t, b] = _round_f16(d * np.float32(s))
    return qx, dx, sx


def quantize_q8_0(x: np.ndarray):
    """x (n, k) float32, k % 32 == 0 -> (qx int8 (n, k), dx f32 (n, k/32) f16-exact, sx f32 (n, k/32)).
    sx = f16(d * sum(q)) is Q8_1's `s` (used by Q4_1/Q5_1 for the min term)."""
    return _q8_0(x)


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
            amax = np.float32(0.0)
            mx = np.float32(0.0)
            for j in range(256):
                a = abs(x[t, o + j])
                if a > amax:
                    amax = a
                    mx = x[t, o + j]
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
