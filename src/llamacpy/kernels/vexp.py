"""A float32 exp (and SiLU) in plain arithmetic that LLVM vectorizes inside numba loops (zmm/ymm), for the
softmaxes of every attention kernel and for SwiGLU (scalar `math.exp` is a libm call per element); and max_f32,
a max whose reductions vectorize (numba's max() is a compare + select that LLVM keeps scalar: 5x slower).

exp_f32(x): n = rint(x log2 e); r = x - n ln2 (ln2 split in a 16-bit head, exact times n, and a tail);
exp(r) on |r| <= ln2/2 by a degree-6 polynomial (coefficients fitted here to the relative error, Lawson
iterations on Chebyshev nodes: 1.7e-8 before float32 rounding); times 2^n built from exponent bits in two
halves, 2^(n//2) * 2^(n - n//2), so results below 2^-126 round gradually to subnormals and 0 and above the float32
range to inf. Inputs are clamped to [-104, 89] first: exp(-104) < 2^-150 rounds to 0 (also -inf, the mask's
value), exp(89) > FLT_MAX is inf. Measured error vs a float64 exp (tests/test_ops_exp.py): at most 2 ulp over
normal results (x in [-87.3, 88.7]) -- 1.19e-7 relative per ulp -- and exp(0) == 1 exactly.

The functions are compiled with only the `contract` fast-math flag (FMA allowed, no reassociation): under
`reassoc` LLVM may fold n*ln2_hi + n*ln2_lo back into one product and lose the split. They stay separate numba
functions (not inline='always', which would give their arithmetic the caller's fast-math flags); LLVM inlines
them into the caller's loop. Element results do not depend on whether a lane is in a vector or in the scalar
remainder loop (tested bit for bit).

Owns: exp_f32, silu_f32, max_f32. Must not: hold loops over arrays (the kernels in ops.py do).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir as _ir
from numba.core import types as _types
from numba.extending import intrinsic as _intrinsic

_FLAGS = dict(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")  # numpy: x / 0 is IEEE, no raise

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)  # 16 significant bits: n * _LN2_HI is exact for |n| <= 256
_LN2_LO = np.float32(1.4286068203094173e-06)  # ln 2 - _LN2_HI
_X_MIN = np.float32(-104.0)
_X_MAX = np.float32(89.0)
# exp(r) ~ 1 + r + C2 r^2 + ... + C6 r^6 on |r| <= ln2/2 (float32 values of the fitted float64 coefficients)
_C1 = np.float32(1.0)
_C2 = np.float32(0.4999999403953552)
_C3 = np.float32(0.16666431725025177)
_C4 = np.float32(0.04166800156235695)
_C5 = np.float32(0.00837415549904108)
_C6 = np.float32(0.0013843653723597527)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)


@_intrinsic
def _rint(typingctx, x):
    """float32 rounded to the nearest integer, ties to even (llvm.rint: vrndscaleps in vectors)."""
    sig = _types.float32(_types.float32)

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.rint", [_ir.FloatType()])
        return builder.call(fn, [args[0]])

    return sig, codegen


@_intrinsic
def _pow2(typingctx, n):
    """2^n as float32 for an integral float32 n in [-126, 127]: the bits (int(n) + 127) << 23."""
    sig = _types.float32(_types.float32)

    def codegen(context, builder, signature, args):
        i32 = _ir.IntType(32)
        k = builder.fptosi(args[0], i32)
        bits = builder.shl(builder.add(k, _ir.Constant(i32, 127)), _ir.Constant(i32, 23))
        return builder.bitcast(bits, _ir.FloatType())

    return sig, codegen


@_intrinsic
def max_f32(typingctx, a, b):
    """The larger of two float32 (llvm.maxnum: a NaN operand yields the other; vmaxps in vectorized reductions).
    A max is exact, so a vectorized max reduction gives the same value as the scalar loop."""
    sig = _types.float32(_types.float32, _types.float32)

    def codegen(context, builder, signature, args):
        f32 = _ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.maxnum", [f32], _ir.FunctionType(f32, [f32, f32]))
        return builder.call(fn, list(args))

    return sig, codegen


@nb.njit(**_FLAGS)
def exp_f32(x):
    """e^x in float32 (see the module docstring for the method and its error bound)."""
    x = min(max(np.float32(x), _X_MIN), _X_MAX)
    n = _rint(x * _LOG2E)  # in [-150, 128]
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO  # |r| <= ~0.3466
    p = _ONE + r * (_C1 + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * _C6)))))
    n1 = _rint(n * _HALF)  # both halves in [-75, 64]: normal powers of two
    return p * _pow2(n1) * _pow2(n - n1)


@nb.njit(**_FLAGS)
def silu_f32(x):
    """x / (1 + e^-x) in float32 (-> -0 for very negative x, x for large x)."""
    x = np.float32(x)
    return x / (_ONE + exp_f32(-x))
