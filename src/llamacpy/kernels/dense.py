"""Kernels for unquantized weights: F16 and BF16 read in place from the memory map (F32 goes to numpy BLAS).

Owns: `mv_half(w16, kind, x, y)` -- few-token matvec over (n_out, n_in) uint16 words, prange over rows, each
weight converted to f32 inside the dot (F16: LLVM's half->float extension, i.e. vcvtph2ps; BF16: the bits
shifted into the high half of an f32) -- and `half_to_f32_range`, f32 tiles for the prompt-path sgemm.
Numerics as llama.cpp: the caller rounds the activations to the weight type (f16 / bf16) first.
Measured (5632x2048 F16 from DRAM): 32.7 GB/s on one thread, 41.8 on two; the earlier integer-ops conversion
into a scratch row reached 25.6 / 16.6.
Must not: choose paths (linear.py does).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .common import PJIT, bits_to_f32, f16_bits_to_f32

KIND_F16, KIND_BF16 = 0, 1


@nb.njit(inline="always", cache=True, nogil=True, fastmath=True)
def _half(kind, h):
    if kind == KIND_F16:
        return f16_bits_to_f32(h)
    return bits_to_f32(np.uint32(h) << np.uint32(16))


@nb.njit(**PJIT)
def mv_half(w, kind, x, y):
    """y (n_tok, n_out) = x (n_tok, n_in) @ w.T for w (n_out, n_in) uint16 (f16 or bf16 bits).
    x must already be rounded to the weight type."""
    n_out, n_in = w.shape
    n_tok = x.shape[0]
    for r in nb.prange(n_out):
        for t in range(n_tok):
            s = np.float32(0.0)
            if kind == KIND_F16:
                for i in range(n_in):
                    s += f16_bits_to_f32(w[r, i]) * x[t, i]
            else:
                for i in range(n_in):
                    s += bits_to_f32(np.uint32(w[r, i]) << np.uint32(16)) * x[t, i]
            y[t, r] = s


@nb.njit(**PJIT)
def mv_f32(w, x, y):
    """y (n_tok, n_out) = x (n_tok, n_in) @ w.T for w (n_out, n_in) f32: the decode path of F32 weights. Each
    output is one dot product in an order fixed by the compiled code, whatever the batch size -- unlike
    sgemm, whose blocking (and so summation order) depends on the shape and on the CPU's BLAS kernel."""
    n_out, n_in = w.shape
    n_tok = x.shape[0]
    for r in nb.prange(n_out):
        for t in range(n_tok):
            s = np.float32(0.0)
            for i in range(n_in):
                s += w[r, i] * x[t, i]
            y[t, r] = s


@nb.njit(**PJIT)
def half_to_f32_range(w, kind, r0, out):
    """out[i] = w[r0 + i] as f32 (for sgemm tiles).  out: (n, n_in) f32"""
    for i in nb.prange(out.shape[0]):
        if kind == KIND_F16:
            for j in range(out.shape[1]):
                out[i, j] = f16_bits_to_f32(w[r0 + i, j])
        else:
            for j in range(out.shape[1]):
                out[i, j] = bits_to_f32(np.uint32(w[r0 + i, j]) << np.uint32(16))
