"""F16 / BF16 decode (matvec) kernels on the SIMD layer (simd.py), reading the weights in place from the mmap.

Owns: `mv_half(isa, w, x, y)` -- y (n_tok, n_out) = x (n_tok, n_in) @ w.T for w (n_out, n_in) 16-bit words
(`mv_half_words`: the same with x already as 16-bit words, `words(x, bf16)`):
F16 when w's dtype is uint16, BF16 when it is int16 (the caller views the same bytes so; the dtype picks the
conversion at compile time: vcvtph2ps for F16, zero-extend + shift by 16 for BF16) -- and the operations it
needs that the layer lacks: `vload_half`, and FMA / add without fast-math flags (`vfma_exact`, `vadd_exact`,
scalar `fma_exact`: rounded once, never re-associated).
Numerics as llama.cpp's ggml_vec_dot_f16 on x86: the caller rounds the activations to the weight type first,
both operands are f32 in the lanes, products are FMA'd into ACC = 4 vectors of width/4 f32 lanes (one chunk
of 4 * width/4 weights per step, GGML_F16_STEP / GGML_F16_EPR), then reduced in a fixed order; the tail that
fills no whole vector is FMA'd one weight at a time. Every (row, token) result is computed by the same
instruction sequence whatever the number of tokens or rows in the call: tokens go in pairs (one weight
conversion, two FMAs) with per-token accumulators whose updates are llvm.fma (no fast-math flags, so LLVM
may not re-associate them), and the pair and single-token loops make the same updates in the same order; the
single-token loop reads two rows at once (rr and rr + ceil(n_out / 2): two memory streams per job), each with
its own accumulators and that same order. The activations are read as 16-bit words of the weight type (written
once per call from the rounded f32 values: exact, so every FMA sees the same f32 operands as before): half the
activation bytes in L1 -- F16 ffn_down (n_in 5632, 22 KiB of f32 per token) from DRAM measured 16 -> 23 GB/s
on one thread, 27 -> 36 on two.
The vector width is taken inside the prange body: a value computed outside reaches numba's outlined parallel
function as an argument, no longer a constant, and the load offsets then cost a register each (measured 20 ->
26 GB/s on one thread once moved).
Must not: choose paths or levels (linear.py, isa.py); round activations (the caller does).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .common import bits_to_f32, f16_bits_to_f32
from .simd import (F32, I16, I32, WIDTH, Vec, _c_array, _call, _is_f32, _level, _ptr, _vt, vhsum,
                   vzero_f32, width)

ACC = 4  # accumulator vectors per token (GGML_F16_ARR)
# No fastmath here: numba's fast-math pass puts `fast` flags on every float instruction, the reduction's adds
# included, and LLVM may then re-associate them by the order values are defined in each loop -- so two loops
# summing the same four accumulators could differ in the last bit (seen in a tiled multi-token variant, not
# kept: it was slower). Every float operation below is explicit; nothing is left for LLVM to vectorise.
_JIT = dict(cache=True, nogil=True)
_PJIT = dict(_JIT, parallel=True)


@intrinsic
def vload_half(typingctx, isa, a, i):
    """width/4 16-bit words at flat index i of `a` as f32 lanes: F16 (uint16 array) by vcvtph2ps, BF16 (int16
    array) by zero-extension and << 16."""
    n = WIDTH[_level(isa)] // 4
    if not (_c_array(a) and isinstance(i, types.Integer) and a.dtype in (types.uint16, types.int16)):
        return None
    bf16 = a.dtype == types.int16

    def cg(context, builder, sig, args):
        h = builder.load(_ptr(context, builder, sig.args[1], args[1], args[2], _vt(I16, n)), align=1)
        if bf16:
            u = builder.shl(builder.zext(h, _vt(I32, n)), ir.Constant(_vt(I32, n), [16] * n))
            return builder.bitcast(u, _vt(F32, n))
        return builder.fpext(builder.bitcast(h, _vt(ir.HalfType(), n)), _vt(F32, n))

    return Vec(types.float32, n)(isa, a, i), cg


@intrinsic
def vfma_exact(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma: vfmadd on every x86 level here, fmla on ARM); never re-associated."""
    if not _is_f32(a, b, c):
        return None

    def cg(context, builder, sig, args):
        vt = _vt(F32, sig.args[0].n)
        return _call(builder, f"llvm.fma.v{sig.args[0].n}f32", vt, [vt] * 3, list(args))

    return a(a, b, c), cg


@intrinsic
def vadd_exact(typingctx, a, b):
    if not _is_f32(a, b):
        return None

    def cg(context, builder, sig, args):
        return builder.fadd(args[0], args[1])

    return a(a, b), cg


@intrinsic
def fma_exact(typingctx, a, b, c):
    """Scalar a * b + c rounded once (llvm.fma.f32), for the tails: the same instruction in every loop."""
    if not all(v == types.float32 for v in (a, b, c)):
        return None

    def cg(context, builder, sig, args):
        return _call(builder, "llvm.fma.f32", F32, [F32] * 3, list(args))

    return types.float32(a, b, c), cg


@intrinsic
def _half_word(typingctx, w, v):
    """f32 v (already rounded to the weight type) as that type's 16-bit word, in w's dtype: F16 (uint16) by
    fptrunc (vcvtps2ph: exact for a representable value), BF16 (int16) as the top half of its bits."""
    if not (isinstance(w, types.Array) and w.dtype in (types.uint16, types.int16) and v == types.float32):
        return None
    bf16 = w.dtype == types.int16

    def cg(context, builder, sig, args):
        if bf16:
            u = builder.bitcast(args[1], I32)
            return builder.trunc(builder.lshr(u, ir.Constant(I32, 16)), I16)
        return builder.bitcast(builder.fptrunc(args[1], ir.HalfType()), I16)

    return w.dtype(w, v), cg


def _scalar(w, i):
    """Weight word i of a row as f32 (compiled per dtype, see the overload below)."""


@overload(_scalar, inline="always")
def _scalar_impl(w, i):
    if w.dtype == types.int16:
        return lambda w, i: bits_to_f32(np.uint32(np.uint16(w[i])) << np.uint32(16))
    return lambda w, i: f16_bits_to_f32(w[i])


@nb.njit(inline="always", **_JIT)
def _reduce(a0, a1, a2, a3):
    """The accumulators summed in a fixed order: (a0 + a2) + (a1 + a3), then the lanes pairwise."""
    return vhsum(vadd_exact(vadd_exact(a0, a2), vadd_exact(a1, a3)))


@nb.njit(inline="always", **_JIT)
def _dot1(isa, wr, xa, nfull, nvec, n_in):
    """One row (wr, 1-D) . one token (xa, 1-D): the single-token update order (see the module doc)."""
    L = width(isa) // 4
    S = ACC * L
    a0 = vzero_f32(isa)
    a1 = vzero_f32(isa)
    a2 = vzero_f32(isa)
    a3 = vzero_f32(isa)
    i = 0
    while i < nfull:
        a0 = vfma_exact(vload_half(isa, wr, i), vload_half(isa, xa, i), a0)
        a1 = vfma_exact(vload_half(isa, wr, i + L), vload_half(isa, xa, i + L), a1)
        a2 = vfma_exact(vload_half(isa, wr, i + 2 * L), vload_half(isa, xa, i + 2 * L), a2)
        a3 = vfma_exact(vload_half(isa, wr, i + 3 * L), vload_half(isa, xa, i + 3 * L), a3)
        i += S
    for i in range(nfull, nvec, L):  # whole vectors past the last whole step go to a0
        a0 = vfma_exact(vload_half(isa, wr, i), vload_half(isa, xa, i), a0)
    sa = _reduce(a0, a1, a2, a3)
    for i in range(nvec, n_in):
        sa = fma_exact(_scalar(wr, i), _scalar(xa, i), sa)
    return sa


@nb.njit(inline="always", **_JIT)
def _dot2(isa, wr, wq, xa, nfull, nvec, n_in):
    """Two rows (wr, wq) . one token: each row's updates exactly _dot1's, in its order (two independent FMA
    chains sharing the activation loads), so each result is _dot1's bit for bit."""
    L = width(isa) // 4
    S = ACC * L
    a0 = vzero_f32(isa)
    a1 = vzero_f32(isa)
    a2 = vzero_f32(isa)
    a3 = vzero_f32(isa)
    b0 = vzero_f32(isa)
    b1 = vzero_f32(isa)
    b2 = vzero_f32(isa)
    b3 = vzero_f32(isa)
    i = 0
    while i < nfull:
        x0 = vload_half(isa, xa, i)
        x1 = vload_half(isa, xa, i + L)
        x2 = vload_half(isa, xa, i + 2 * L)
        x3 = vload_half(isa, xa, i + 3 * L)
        a0 = vfma_exact(vload_half(isa, wr, i), x0, a0)
        a1 = vfma_exact(vload_half(isa, wr, i + L), x1, a1)
        a2 = vfma_exact(vload_half(isa, wr, i + 2 * L), x2, a2)
        a3 = vfma_exact(vload_half(isa, wr, i + 3 * L), x3, a3)
        b0 = vfma_exact(vload_half(isa, wq, i), x0, b0)
        b1 = vfma_exact(vload_half(isa, wq, i + L), x1, b1)
        b2 = vfma_exact(vload_half(isa, wq, i + 2 * L), x2, b2)
        b3 = vfma_exact(vload_half(isa, wq, i + 3 * L), x3, b3)
        i += S
    for i in range(nfull, nvec, L):
        xv = vload_half(isa, xa, i)
        a0 = vfma_exact(vload_half(isa, wr, i), xv, a0)
        b0 = vfma_exact(vload_half(isa, wq, i), xv, b0)
    sa = _reduce(a0, a1, a2, a3)
    sb = _reduce(b0, b1, b2, b3)
    for i in range(nvec, n_in):
        xi = _scalar(xa, i)
        sa = fma_exact(_scalar(wr, i), xi, sa)
        sb = fma_exact(_scalar(wq, i), xi, sb)
    return sa, sb


@nb.njit(inline="always", **_JIT)
def _pairs(isa, w, x, y, r, nfull, nvec, n_in):
    """Row r times the call's token pairs (tokens 2p, 2p + 1; x: 16-bit words): each weight vector converted
    once, two FMAs."""
    n_tok = x.shape[0]
    L = width(isa) // 4  # set inside the parallel body: a compile-time constant there (load offsets fold)
    S = ACC * L  # weights per step
    wr = w[r]  # (n_in,)
    for t0 in range(0, n_tok - 1, 2):  # token pairs: each weight vector converted once
        xa = x[t0]  # (n_in,)
        xb = x[t0 + 1]
        a0 = vzero_f32(isa)
        a1 = vzero_f32(isa)
        a2 = vzero_f32(isa)
        a3 = vzero_f32(isa)
        b0 = vzero_f32(isa)
        b1 = vzero_f32(isa)
        b2 = vzero_f32(isa)
        b3 = vzero_f32(isa)
        i = 0
        while i < nfull:
            w0 = vload_half(isa, wr, i)
            w1 = vload_half(isa, wr, i + L)
            w2 = vload_half(isa, wr, i + 2 * L)
            w3 = vload_half(isa, wr, i + 3 * L)
            a0 = vfma_exact(w0, vload_half(isa, xa, i), a0)
            a1 = vfma_exact(w1, vload_half(isa, xa, i + L), a1)
            a2 = vfma_exact(w2, vload_half(isa, xa, i + 2 * L), a2)
            a3 = vfma_exact(w3, vload_half(isa, xa, i + 3 * L), a3)
            b0 = vfma_exact(w0, vload_half(isa, xb, i), b0)
            b1 = vfma_exact(w1, vload_half(isa, xb, i + L), b1)
            b2 = vfma_exact(w2, vload_half(isa, xb, i + 2 * L), b2)
            b3 = vfma_exact(w3, vload_half(isa, xb, i + 3 * L), b3)
            i += S
        for i in range(nfull, nvec, L):
            wv = vload_half(isa, wr, i)
            a0 = vfma_exact(wv, vload_half(isa, xa, i), a0)
            b0 = vfma_exact(wv, vload_half(isa, xb, i), b0)
        sa = _reduce(a0, a1, a2, a3)
        sb = _reduce(b0, b1, b2, b3)
        for i in range(nvec, n_in):
            wi = _scalar(wr, i)
            sa = fma_exact(wi, _scalar(xa, i), sa)
            sb = fma_exact(wi, _scalar(xb, i), sb)
        y[t0, r] = sa
        y[t0 + 1, r] = sb


@nb.njit(**_JIT)
def mv_half(isa, w, x, y):
    """y (n_tok, n_out) = x (n_tok, n_in) f32 (already rounded to the weight type) @ w.T, w (n_out, n_in) uint16
    (F16) or int16 (BF16 bits): x written as the weights' 16-bit words (exact), then mv_half_words."""
    n_tok, n_in = x.shape
    xw = np.empty((n_tok, n_in), w.dtype)  # x's values as the weights' 16-bit words (exact: already rounded)
    for t in range(n_tok):
        for i in range(n_in):
            xw[t, i] = _half_word(w, x[t, i])
    mv_half_words(isa, w, xw, y)


@nb.njit(**_PJIT)
def mv_half_words(isa, w, xw, y):
    """y (n_tok, n_out) = xw (n_tok, n_in) @ w.T, both 16-bit words of the weight type (w's dtype); allocates
    nothing (the NEON emulation test runs it as is).
    Job rr of the parallel loop takes rows rr and rr + h (h = ceil(n_out / 2)): the last (odd) token, a
    one-token call's only one, reads the two rows in one loop (_dot2) -- two independent streams through
    memory per core, which the prefetchers keep fuller than one: measured on the 22 ffn_gate/ffn_up pairs of
    tl-F16 from DRAM (Zen 4 VM, 15 rounds, best), 1 thread 22-25 -> 28-30 GB/s, 2 threads 41-45 -> 51-53 GB/s
    (a numba read of the same bytes: 26-28 / 52). Token pairs run row by row as before."""
    n_out, n_in = w.shape
    n_tok = xw.shape[0]
    nfull = n_in // (ACC * width(isa) // 4) * (ACC * width(isa) // 4)
    nvec = n_in // (width(isa) // 4) * (width(isa) // 4)
    h = (n_out + 1) // 2
    for rr in nb.prange(h):
        r2 = rr + h
        if n_tok % 2:
            if r2 < n_out:
                sa, sb = _dot2(isa, w[rr], w[r2], xw[n_tok - 1], nfull, nvec, n_in)
                y[n_tok - 1, rr] = sa
                y[n_tok - 1, r2] = sb
            else:
                y[n_tok - 1, rr] = _dot1(isa, w[rr], xw[n_tok - 1], nfull, nvec, n_in)
        if n_tok > 1:
            _pairs(isa, w, xw, y, rr, nfull, nvec, n_in)
            if r2 < n_out:
                _pairs(isa, w, xw, y, r2, nfull, nvec, n_in)


def words(x: np.ndarray, bf16: bool) -> np.ndarray:
    """x (n, n_in) f32, already rounded to F16 / BF16, as mv_half_words takes it: uint16 F16 words or int16 BF16
    bits (exact)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if bf16:
        return (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16).view(np.int16)
    return x.astype(np.float16).view(np.uint16)


def weights(w16: np.ndarray, bf16: bool) -> np.ndarray:
    """The (n_out, n_in) uint16 words as mv_half takes them: uint16 for F16, an int16 view for BF16."""
    return w16.view(np.int16) if bf16 else w16
