"""The legacy 32-element block types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: numpy dequantizers, numba quantizers.

Owns: the block layouts (ggml-common.h) and the reference quantizers, byte-identical to ggml's
`quantize_row_*_ref` (float32 arithmetic throughout, the same truncations, `roundf` for Q8_0, f16 scales
rounded to nearest even). Dequantizers are vectorised over blocks: `(n_blocks, type_size)` uint8 in,
`(n_blocks, 32)` float32 out. Quantizers take `(n_blocks, 32)` float32 and fill `(n_blocks, type_size)` uint8,
in parallel over blocks.

Must not: choose types or walk tensors (quantize.py does), or do matmuls (kernels/ does).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numba import prange

from .half import f32_to_f16_bits

F32 = np.float32
_FLT_MAX = F32(3.4028234663852886e38)


# ---------------------------------------------------------------------------------------------------------
# dequantization (numpy, vectorised over blocks)


def _f16_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The f16 at byte `offset` of every block, as float32 of shape (n_blocks, 1)."""
    return blocks[:, offset:offset + 2].copy().view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n_blocks, 16) packed bytes -> (n_blocks, 32) values: low nibbles are elements 0-15, high 16-31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _high_bits(qh_bytes: np.ndarray) -> np.ndarray:
    """(n_blocks, 4) little-endian uint32 -> (n_blocks, 32) bits, bit j for element j."""
    qh = qh_bytes.copy().view("<u4")  # (n_blocks, 1)
    return ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16_field(blocks, 0)
    q = _nibbles(blocks[:, 2:18]).astype(np.int8) - np.int8(8)  # (n_blocks, 32)
    return q.astype(np.float32) * d


def dequantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    d, m = _f16_field(blocks, 0), _f16_field(blocks, 2)
    return _nibbles(blocks[:, 4:20]).astype(np.float32) * d + m


def dequantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16_field(blocks, 0)
    q = (_nibbles(blocks[:, 6:22]) | (_high_bits(blocks[:, 2:6]) << 4)).astype(np.int8) - np.int8(16)
    return q.astype(np.float32) * d


def dequantize_q5_1(blocks: np.ndarray) -> np.ndarray:
    d, m = _f16_field(blocks, 0), _f16_field(blocks, 2)
    q = _nibbles(blocks[:, 8:24]) | (_high_bits(blocks[:, 4:8]) << 4)
    return q.astype(np.float32) * d + m


def dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16_field(blocks, 0)
    return blocks[:, 2:34].view(np.int8).astype(np.float32) * d


# ---------------------------------------------------------------------------------------------------------
# quantization (numba, parallel over blocks; float32 arithmetic exactly as the C reference)


@nb.njit(cache=True, inline="always")
def _store_f16(out, i, o, v):
    h = f32_to_f16_bits(v)
    out[i, o] = h & 0xFF
    out[i, o + 1] = h >> 8


@nb.njit(cache=True, inline="always")
def _signed_absmax(x, i):
    """The element of largest magnitude (first one on ties), with its sign."""
    amax = F32(0.0)
    mx = F32(0.0)
    for j in range(32):
        v = x[i, j]
        if amax < abs(v):
            amax = abs(v)
            mx = v
    return mx


@nb.njit(cache=True, inline="always")
def _min_max(x, i):
    lo = _FLT_MAX
    hi = -_FLT_MAX
    for j in range(32):
        v = x[i, j]
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    return lo, hi


@nb.njit(cache=True, inline="always")
def _inverse(d):
    return F32(1.0) / d if d != F32(0.0) else F32(0.0)


@nb.njit(parallel=True, cache=True)
def quantize_q4_0(x, out):  # x (n_blocks, 32) f32, out (n_blocks, 18) u8
    for i in prange(x.shape[0]):
        d = _signed_absmax(x, i) / F32(-8.0)
        inv = _inverse(d)
        _store_f16(out, i, 0, d)
        for j in range(16):
            q0 = min(15, int(x[i, j] * inv + F32(8.5)))
            q1 = min(15, int(x[i, j + 16] * inv + F32(8.5)))
            out[i, 2 + j] = q0 | (q1 << 4)


@nb.njit(parallel=True, cache=True)
def quantize_q4_1(x, out):  # x (n_blocks, 32) f32, out (n_blocks, 20) u8
    for i in prange(x.shape[0]):
        lo, hi = _min_max(x, i)
        d = (hi - lo) / F32(15.0)
        inv = _inverse(d)
        _store_f16(out, i, 0, d)
        _store_f16(out, i, 2, lo)
        for j in range(16):
            q0 = min(15, int((x[i, j] - lo) * inv + F32(0.5)))
            q1 = min(15, int((x[i, j + 16] - lo) * inv + F32(0.5)))
            out[i, 4 + j] = q0 | (q1 << 4)


@nb.njit(cache=True, inline="always")
def _store_u32(out, i, o, v):
    for k in range(4):
        out[i, o + k] = (v >> (8 * k)) & 0xFF


@nb.njit(parallel=True, cache=True)
def quantize_q5_0(x, out):  # x (n_blocks, 32) f32, out (n_blocks, 22) u8
    for i in prange(x.shape[0]):
        d = _signed_absmax(x, i) / F32(-16.0)
        inv = _inverse(d)
        _store_f16(out, i, 0, d)
        qh = 0
        for j in range(16):
            q0 = min(31, int(x[i, j] * inv + F32(16.5)))
            q1 = min(31, int(x[i, j + 16] * inv + F32(16.5)))
            out[i, 6 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
            qh |= ((q0 & 0x10) >> 4) << j
            qh |= ((q1 & 0x10) >> 4) << (j + 16)
        _store_u32(out, i, 2, qh)


@nb.njit(parallel=True, cache=True)
def quantize_q5_1(x, out):  # x (n_blocks, 32) f32, out (n_blocks, 24) u8
    for i in prange(x.shape[0]):
        lo, hi = _min_max(x, i)
        d = (hi - lo) / F32(31.0)
        inv = _inverse(d)
        _store_f16(out, i, 0, d)
        _store_f16(out, i, 2, lo)
        qh = 0
        for j in range(16):
            q0 = int((x[i, j] - lo) * inv + F32(0.5)) & 0xFF
            q1 = int((x[i, j + 16] - lo) * inv + F32(0.5)) & 0xFF
            out[i, 8 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
            qh |= ((q0 & 0x10) >> 4) << j
            qh |= ((q1 & 0x10) >> 4) << (j + 16)
        _store_u32(out, i, 4, qh)


@nb.njit(cache=True, inline="always")
def _roundf(v):
    """C roundf: half away from zero (exact in float64 for a float32 input)."""
    r = math.floor(abs(np.float64(v)) + 0.5)
    return int(-r if v < 0 else r)


@nb.njit(parallel=True, cache=True)
def quantize_q8_0(x, out):  # x (n_blocks, 32) f32, out (n_blocks, 34) u8
    for i in prange(x.shape[0]):
        amax = F32(0.0)
        for j in range(32):
            amax = max(amax, abs(x[i, j]))
        d = amax / F32(127.0)
        inv = _inverse(d)
        _store_f16(out, i, 0, d)
        for j in range(32):
            out[i, 2 + j] = _roundf(x[i, j] * inv) & 0xFF
