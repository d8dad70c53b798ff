"""Float formats: IEEE half (F16) and brain float (BF16), as whole-array numpy codecs and as numba scalars.

Owns: F16 / BF16 <-> float32 conversion exactly as ggml does it (F16: round to nearest even, as
`GGML_FP32_TO_FP16`; BF16: ggml's `ggml_compute_fp32_to_bf16` -- round to nearest even on the bit pattern,
NaN forced quiet, subnormals kept), and the numba scalar helpers the block quantizers use to store and
re-read their f16 scales (`f32_to_f16_bits`, `f16_bits_to_f32`).

Must not: know about block layouts (legacy.py / kquants.py do).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

_TWO_M14 = 6.103515625e-05  # 2**-14, the smallest normal half
_TWO_24 = 16777216.0


@nb.njit(cache=True, inline="always")
def f32_to_f16_bits(v):
    """float32 -> IEEE half bit pattern (int), round to nearest even. Exact: done in float64."""
    a = abs(np.float64(v))
    sign = 0x8000 if math.copysign(1.0, v) < 0 else 0
    if a != a:
        return sign | 0x7E00
    if a >= 65520.0:
        return sign | 0x7C00
    if a < _TWO_M14:  # subnormal (or zero): units of 2**-24
        return sign | int(np.rint(a * _TWO_24))
    m, e = math.frexp(a)  # a = m * 2**e, m in [0.5, 1)
    q = int(np.rint(m * 2048.0))  # 11 significant bits, in [1024, 2048]
    ex = e - 1
    if q == 2048:
        q = 1024
        ex += 1
    return sign | ((ex + 15) << 10) | (q - 1024)


@nb.njit(cache=True, inline="always")
def f16_bits_to_f32(h):
    """IEEE half bit pattern -> float32."""
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = math.ldexp(np.float64(m), -24)
    elif e == 31:
        v = math.inf if m == 0 else math.nan
    else:
        v = math.ldexp(np.float64(1024 + m), e - 25)
    if h & 0x8000:
        v = -v
    return np.float32(v)


def f32_to_f16(x: np.ndarray) -> np.ndarray:
    """float32 array -> float16 array (numpy rounds to nearest even, as ggml)."""
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 array -> BF16 bit patterns (uint16), as ggml_compute_fp32_to_bf16."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16).astype(np.uint16)  # NaNs may wrap; fixed below
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    if is_nan.any():
        rounded = np.where(is_nan, ((u >> 16) | 64).astype(np.uint16), rounded)
    return rounded


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """BF16 bit patterns (uint16) -> float32."""
    return (np.asarray(bits).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
