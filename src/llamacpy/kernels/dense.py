"""Kernels for unquantized weights: F16 and BF16 read in place from the memory map (F32 goes to numpy BLAS).

Owns: `mv_half(w16, kind, x, y)` -- few-token matvec over (n_out, n_in) uint16 words, prange over row chunks,
each row converted to f32 in an L1-resident scratch with integer ops (numba has no CPU float16) and dotted with
the activations; `half_to_f32_range` -- f32 tiles for the prompt-processing sgemm.
Numerics as llama.cpp: the caller rounds the activations to the weight type (f16 / bf16) first.

F16 conversion trick: the f32 whose bits are ((h & 0x8000) << 16) | ((h & 0x7fff) << 13) equals the f16 value
times 2**-112 (exactly, subnormals included), so the dot is taken against activations pre-scaled by 2**112
(exact: a power of two, and |x| <= 65504 after f16 rounding keeps x * 2**112 finite).
Must not: choose paths (linear.py does).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .common import PJIT

KIND_F16, KIND_BF16 = 0, 1
F16_PRESCALE = np.float32(2.0 ** 112)


@nb.njit(inline="always", cache=True, nogil=True, fastmath=True)
def _row_bits(kind, w_row, bits):
    """uint16 words -> uint32 f32 bit patterns (f16: value * 2**-112; bf16: exact value)."""
    if kind == KIND_F16:
        for i in range(w_row.shape[0]):
            h = np.uint32(w_row[i])
            bits[i] = ((h & np.uint32(0x8000)) << np.uint32(16)) | ((h & np.uint32(0x7FFF)) << np.uint32(13))
    else:
        for i in range(w_row.shape[0]):
            bits[i] = np.uint32(w_row[i]) << np.uint32(16)


@nb.njit(**PJIT)
def mv_half(w, kind, x, y):
    """y (n_tok, n_out) = x (n_tok, n_in) @ w.T for w (n_out, n_in) uint16 (f16 or bf16 bits).
    x must already be rounded to the weight type (and, for f16, multiplied by 2**112)."""
    n_out, n_in = w.shape
    n_tok = x.shape[0]
    CH = 8
    for c in nb.prange((n_out + CH - 1) // CH):
        bits = np.empty(n_in, np.uint32)
        f = bits.view(np.float32)
        for r in range(c * CH, min(n_out, c * CH + CH)):
            _row_bits(kind, w[r], bits)
            for t in range(n_tok):
                s = np.float32(0.0)
                for i in range(n_in):
                    s += f[i] * x[t, i]
                y[t, r] = s


@nb.njit(**PJIT)
def half_to_f32_range(w, kind, r0, out):
    """out[i] = w[r0 + i] as f32 (exact value, for sgemm tiles).  out: (n, n_in) f32"""
    for i in nb.prange(out.shape[0]):
        bits = out[i].view(np.uint32)
        _row_bits(kind, w[r0 + i], bits)
        if kind == KIND_F16:
            for j in range(out.shape[1]):
                out[i, j] *= np.float32(2.0 ** 112)
