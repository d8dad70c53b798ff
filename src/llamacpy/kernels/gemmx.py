"""Decode calls through gemm_simd's small tiles with the activations quantized in the same compiled call.

Owns: `GEMMX` (ggml type -> kernel), `gemmx_q4_0` / `gemmx_q8_0` / `gemmx_q4_k` / `gemmx_q6_k(isa, tile, *packed, x,
*mvx_args, y)`: x (n, n_in) f32 -> the decode kernel's activation arrays (legacy_simd / kquants_simd `_quant_prep`, the
same function their `activations` and MVX kernels call) -> gemm_simd's GEMM with the tile, as MVX does for the
matvec kernels: one dispatch a call and no activation array boxed back to Python (measured on the 1.1B
Q4_K_M, 2 threads: ~99 such calls a token, ~11 us each for the separate `activations` call). Same arrays, same
GEMM: every (row, token) bit for bit what GEMM[typ](*packed, *activations(typ, level, x)) gives.
Must not: choose tiles or paths (linear.py), or define a layout or a quantization.
"""

from __future__ import annotations

import numba as nb

from . import kquants_simd, legacy_simd
from .common import Q4_0, Q4_K, Q6_K, Q8_0
from .gemm_simd import gemm_q4_0, gemm_q4_k, gemm_q6_k, gemm_q8_0

_JIT = dict(cache=True, nogil=True)


@nb.njit(**_JIT)
def gemmx_q4_0(isa, tl, qs, d, x, n32, off, y):
    xa, xb, xd, xo, _ = legacy_simd._quant_prep(x, d.shape[1], n32, True, off)
    gemm_q4_0(isa, tl, qs, d, xa, xb, xd, xo, y)


@nb.njit(**_JIT)
def gemmx_q8_0(isa, tl, qs, d, x, n32, off, y):
    xa, _, xd, xo, _ = legacy_simd._quant_prep(x, d.shape[1], n32, False, off)
    gemm_q8_0(isa, tl, qs, d, xa, xd, xo, y)


@nb.njit(**_JIT)
def gemmx_q4_k(isa, tl, qs, sl, sh, ml, mh, d, dmin, x, n32, W, y):
    xa, xb, bl, bh, xd = kquants_simd._quant_prep(x, sl.shape[1], n32)
    gemm_q4_k(isa, tl, qs, sl, sh, ml, mh, d, dmin, xa, xb, bl, bh, xd, y)


@nb.njit(**_JIT)
def gemmx_q6_k(isa, tl, qv, sc, d, x, n32, W, y):
    xq, xo, xd4 = kquants_simd._quant_prep_q6(x, W)
    gemm_q6_k(isa, tl, qv, sc, d, xq, xo, xd4, y)


GEMMX = {Q4_0: gemmx_q4_0, Q8_0: gemmx_q8_0, Q4_K: gemmx_q4_k, Q6_K: gemmx_q6_k}
