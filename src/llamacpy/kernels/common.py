"""Shared pieces of the weight kernels: JIT options, ggml type ids and block sizes, the f16 -> f32 table.

Owns: constants every kernel module needs. Must not: hold kernels itself.
"""

from __future__ import annotations

import numpy as np

# numba options for every weight kernel: compiled on first call (lazily, per type), cached on disk
JIT = dict(cache=True, nogil=True, fastmath=True)
PJIT = dict(JIT, parallel=True)

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16 = 10, 11, 12, 13, 14, 30
QK_K = 256

# ggml type -> (weights per block, bytes per block)
BLOCK = {
    F32: (1, 4), F16: (1, 2), BF16: (1, 2),
    Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24), Q8_0: (32, 34),
    Q2_K: (256, 84), Q3_K: (256, 110), Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210),
}
LEGACY = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
KQUANTS = (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)

# every float16 bit pattern as float32: block scales are read through this table (numba has no CPU float16)
F16_TABLE = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)  # (65536,)


def f16_round(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest float16 (ties to even), as float32."""
    return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


def bf16_round(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 as ggml's GGML_FP32_TO_BF16 does (nearest, ties to even; NaN quieted)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    r = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)) << np.uint32(16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        r = np.where(nan, ((u >> np.uint32(16)) | np.uint32(64)) << np.uint32(16), r)
    return r.astype(np.uint32).view(np.float32)


# -- scalar bit casts numba lacks (LLVM instructions; they vectorise: fpext half->float is vcvtph2ps) ------------
from numba.core import types as _types  # noqa: E402
from numba.extending import intrinsic as _intrinsic  # noqa: E402
from llvmlite import ir as _ir  # noqa: E402


@_intrinsic
def f16_bits_to_f32(typingctx, v):
    """uint16 float16 bit pattern -> its float32 value (exact, subnormals and inf/nan included)."""
    sig = _types.float32(_types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], _ir.HalfType()), _ir.FloatType())

    return sig, codegen


@_intrinsic
def bits_to_f32(typingctx, v):
    """uint32 bit pattern -> float32 (a reinterpretation, as C's memcpy)."""
    sig = _types.float32(_types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], _ir.FloatType())

    return sig, codegen


@_intrinsic
def f32_round_f16(typingctx, v):
    """float32 rounded to the nearest float16 (ties to even; overflow to inf), back as float32:
    LLVM fptrunc/fpext, i.e. vcvtps2ph/vcvtph2ps -- what ggml's FP32_TO_FP16 does."""
    sig = _types.float32(_types.float32)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.fptrunc(args[0], _ir.HalfType()), _ir.FloatType())

    return sig, codegen
