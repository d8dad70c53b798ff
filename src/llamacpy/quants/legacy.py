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
#
# The kernels write the quant bytes and return the float32 scale (and min) of each block in side arrays; the
# f16 rounding of those is done afterwards in numpy (`_put_f16`). That is exact: the C code computes its
# inverse scale from the unrounded float d, and only stores the rounded one.


def _put_f16(out: np.ndarray, offset: int, v: np.ndarray) -> None:
    out[:, offset:offset + 2] = v.astype(np.float16).view(np.uint8).reshape(-1, 2)


@nb.njit(cache=True, inline="always")
def _signed_absmax(x, i):
    """The element of largest magnitude, first one on ties (as the C loop `if (amax < fabsf(v))`), signed."""
    amax = F32(0.0)
    for j in range(32):
        amax = max(amax, abs(x[i, j]))
    if amax > F32(0.0):
        for j in range(32):
            if abs(x[i, j]) == amax:
                return x[i, j]
    return F32(0.0)  # all zero: C keeps its initial max = 0.0f (so d = -0.0)


@nb.njit(cache=True, inline="always")
def _min_max(x, i):
    lo = _FLT_MAX
    hi = -_FLT_MAX
    for j in range(32):
        lo = min(lo, x[i, j])
        hi = max(hi, x[i, j])
    return lo, hi


@nb.njit(cache=True, inline="always")
def _inverse(d):
    return F32(1.0) / d if d != F32(0.0) else F32(0.0)


@nb.njit(parallel=True, cache=True)
def _q4_0(x, out, ds):  # x (n_blocks, 32) f32, out (n_blocks, 18) u8, ds (n_blocks,) f32
    for i in prange(x.shape[0]):
        d = _signed_absmax(x, i) / F32(-8.0)
        ds[i] = d
        inv = _inverse(d)
        for j in range(16):
            q0 = min(15, np.int32(x[i, j] * inv + F32(8.5)))
            q1 = min(15, np.int32(x[i, j + 16] * inv + F32(8.5)))
            out[i, 2 + j] = q0 | (q1 << 4)


@nb.njit(parallel=True, cache=True)
def _q4_1(x, out, ds, ms):  # x (n_blocks, 32) f32, out (n_blocks, 20) u8
    for i in prange(x.shape[0]):
        lo, hi = _min_max(x, i)
        d = (hi - lo) / F32(15.0)
        ds[i] = d
        ms[i] = lo
        inv = _inverse(d)
        for j in range(16):
            q0 = min(15, np.int32((x[i, j] - lo) * inv + F32(0.5)))
            q1 = min(15, np.int32((x[i, j + 16] - lo) * inv + F32(0.5)))
            out[i, 4 + j] = q0 | (q1 << 4)


@nb.njit(cache=True, inline="always")
def _store_u32(out, i, o, v):
    for k in range(4):
        out[i, o + k] = (v >> (8 * k)) & 0xFF


@nb.njit(parallel=True, cache=True)
def _q5_0(x, out, ds):  # x (n_blocks, 32) f32, out (n_blocks, 22) u8
    for i in prange(x.shape[0]):
        d = _signed_absmax(x, i) / F32(-16.0)
        ds[i] = d
        inv = _inverse(d)
        qh = 0
        for j in range(16):
            q0 = min(31, np.int32(x[i, j] * inv + F32(16.5)))
            q1 = min(31, np.int32(x[i, j + 16] * inv + F32(16.5)))
            out[i, 6 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
            qh |= ((q0 & 0x10) >> 4) << j
            qh |= ((q1 & 0x10) >> 4) << (j + 16)
        _store_u32(out, i, 2, qh)


@nb.njit(parallel=True, cache=True)
def _q5_1(x, out, ds, ms):  # x (n_blocks, 32) f32, out (n_blocks, 24) u8
    for i in prange(x.shape[0]):
        lo, hi = _min_max(x, i)
        d = (hi - lo) / F32(31.0)
        ds[i] = d
        ms[i] = lo
        inv = _inverse(d)
        qh = 0
        for j in range(16):
            q0 = np.int32((x[i, j] - lo) * inv + F32(0.5)) & 0xFF
            q1 = np.int32((x[i, j + 16] - lo) * inv + F32(0.5)) & 0xFF
            out[i, 8 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
            qh |= ((q0 & 0x10) >> 4) << j
            qh |= ((q1 & 0x10) >> 4) << (j + 16)
        _store_u32(out, i, 4, qh)


@nb.njit(cache=True, inline="always")
def _roundf(v):
    """C roundf: half away from zero (exact in float64 for a float32 input)."""
    r = math.floor(abs(np.float64(v)) + 0.5)
    return np.int32(-r if v < 0 else r)


@nb.njit(parallel=True, cache=True)
def _q8_0(x, out, ds):  # x (n_blocks, 32) f32, out (n_blocks, 34) u8
    for i in prange(x.shape[0]):
        amax = F32(0.0)
        for j in range(32):
            amax = max(amax, abs(x[i, j]))
        d = amax / F32(127.0)
        ds[i] = d
        inv = _inverse(d)
        for j in range(32):
            out[i, 2 + j] = _roundf(x[i, j] * inv) & 0xFF


def _with_scale(kernel):
    def quantize_blocks(x: np.ndarray, out: np.ndarray) -> None:
        ds = np.empty(x.shape[0], np.float32)  # (n_blocks,)
        kernel(x, out, ds)
        _put_f16(out, 0, ds)
    return quantize_blocks


def _with_scale_min(kernel):
    def quantize_blocks(x: np.ndarray, out: np.ndarray) -> None:
        ds = np.empty(x.shape[0], np.float32)
        ms = np.empty(x.shape[0], np.float32)
        kernel(x, out, ds, ms)
        _put_f16(out, 0, ds)
        _put_f16(out, 2, ms)
    return quantize_blocks


quantize_q4_0 = _with_scale(_q4_0)
quantize_q4_1 = _with_scale_min(_q4_1)
quantize_q5_0 = _with_scale(_q5_0)
quantize_q5_1 = _with_scale_min(_q5_1)
quantize_q8_0 = _with_scale(_q8_0)
