"""The F16 / BF16 prompt GEMM (kernels/gemm_half.py) on every SIMD level this CPU runs.

Two checks per case. (1) Bit for bit against the decode kernel dense_simd.mv_half of the same level on the
same weights and activations, called 8 tokens and 1 token at a time: a row's prompt result must not depend on
the batch (prefix reuse, batching, model.prompt_split_exact). (2) Against a float64 reference (the weights'
exact f32 values, the activations rounded to the weight type as LinearHalf does, float64 matmul) with the
standard forward error bound of an f32 dot product: |y - ref| <= m * 2^-24 * (|x| @ |w|.T) where m bounds the
longest chain of f32 roundings any result sees (accumulator 0's n_in / (4 L) + 3 FMAs, two adds and log2(L)
lane adds, at most L - 1 tail FMAs): n_in // 16 + 32 covers every level (L >= 4). Products are exact in f32
(11- or 8-bit significands), so only the accumulation rounds.
Shapes: n_in below one vector (scalar tail only), with and without remainder vectors / a scalar tail, odd row
counts (partial row tiles), 9 / 17 / 64 / 100 tokens (partial token tiles), and a long row whose 100 tokens
span two token blocks. Weights include subnormals, signed zeros and +-65504 (F16) / +-65280 (BF16: its max
would overflow the f32 sums) for the conversions' exactness.
"""

from __future__ import annotations

import numpy as np
import pytest

from llamacpy.kernels import dense_simd, gemm_half, isa, make_linear, simd
from llamacpy.kernels.common import BF16, F16, bf16_round, f16_round
from llamacpy.kernels.linear import DECODE_MAX

LEVELS = ["avx512vnni", "avxvnni", "avx2", "neon"]
HAVE = isa.available()
TOKENS = (9, 17, 64, 100)


def _need(level):
    if level not in HAVE:
        pytest.skip(f"this CPU ({isa.host_cpu_name()}) cannot run {level}; it runs {', '.join(HAVE)}")


def _weights(rng, n_out, n_in, bf16):
    """(w16 as the kernels take it, its exact f32 values): normal values with every 7th word special."""
    w = (rng.standard_normal((n_out, n_in)) * 0.05).astype(np.float32)
    if bf16:
        w16 = (w.view(np.uint32) >> 16).astype(np.uint16)
        special = np.array([0x0000, 0x8000, 0x0001, 0x807F, 0x477F, 0xC77F], np.uint16)  # zeros, subnormals, +-65280
    else:
        w16 = w.astype(np.float16).view(np.uint16)
        special = np.array([0x0000, 0x8000, 0x0001, 0x83FF, 0x7BFF, 0xFBFF], np.uint16)
    flat = w16.reshape(-1)
    flat[::7] = special[rng.integers(0, special.size, flat[::7].size)]
    wf = (w16.astype(np.uint32) << 16).view(np.float32) if bf16 else w16.view(np.float16).astype(np.float32)
    return dense_simd.weights(w16, bf16), wf


def _check(level, bf16, n_out, n_in, tokens, seed):
    _need(level)
    rng = np.random.default_rng(seed)
    w, wf = _weights(rng, n_out, n_in, bf16)
    tok = simd.token(level)
    bound_m = (n_in // 16 + 32) * 2.0 ** -24
    for n in tokens:
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        x = bf16_round(x) if bf16 else f16_round(x)
        y = np.full((n, n_out), np.nan, np.float32)
        gemm_half.gemm_half(tok, w, x, y)
        for step in (DECODE_MAX, 1):
            yd = np.full((n, n_out), np.nan, np.float32)
            for a in range(0, n, step):
                dense_simd.mv_half(tok, w, x[a:a + step], yd[a:a + step])
            np.testing.assert_array_equal(y.view(np.uint32), yd.view(np.uint32),
                                          err_msg=f"{level} bf16={bf16} n={n} step={step}")
        x64, w64 = x.astype(np.float64), wf.astype(np.float64)
        ref = x64 @ w64.T
        bound = bound_m * (np.abs(x64) @ np.abs(w64).T)
        assert np.all(np.abs(y - ref) <= bound), (level, bf16, n, float(np.max(np.abs(y - ref) - bound)))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("bf16", [False, True], ids=["F16", "BF16"])
@pytest.mark.parametrize("n_out,n_in", [(3, 7), (37, 96), (70, 2080), (5, 1100)])
def test_gemm_half_matches_decode_bitwise_and_reference(level, bf16, n_out, n_in):
    _check(level, bf16, n_out, n_in, TOKENS, n_out * 1000 + n_in + bf16)


@pytest.mark.parametrize("level", LEVELS)
def test_gemm_half_two_token_blocks(level):
    """n_in 16403 (one remainder vector at L = 16, three tail weights): BLOCK_BYTES holds fewer than 100 tokens,
    so the tokens come in two blocks, the second one partial."""
    n_in = 16403
    assert gemm_half.BLOCK_BYTES // (4 * n_in) < 100
    _check(level, False, 6, n_in, (100,), 7)


@pytest.mark.parametrize("typ", [F16, BF16], ids=["F16", "BF16"])
def test_linear_half_prompt_rows_independent_of_batch(typ):
    """Through make_linear on this process's level: a prompt of 17 tokens (the GEMM where the level has one)
    gives every token the bits of decoding it alone and of any prefix; model.prompt_split_exact's flag is set
    exactly where the GEMM serves prompts."""
    rng = np.random.default_rng(11 + typ)
    n_out, n_in = 45, 200
    w16 = (rng.standard_normal((n_out, n_in)) * 0.1).astype(np.float16).view(np.uint16)
    lin = make_linear(typ, w16.view(np.uint8).reshape(-1), (n_out, n_in), "lin")
    assert lin.prompt_by_decode == (isa.level() in gemm_half.LEVELS)
    x = rng.standard_normal((17, n_in)).astype(np.float32)
    y = lin(x)
    if lin.prompt_by_decode:
        np.testing.assert_array_equal(y, np.concatenate([lin(x[i:i + 1]) for i in range(17)]))
        np.testing.assert_array_equal(lin(x[:13]), y[:13])
    strided = np.full((17, 2 * n_out), np.nan, np.float32)[:, ::2]  # a caller's non-contiguous out= view
    assert lin(x, out=strided) is strided
    np.testing.assert_array_equal(strided, y)


@pytest.mark.parametrize("bf16", [False, True], ids=["F16", "BF16"])
def test_round_activations_matches_common(bf16):
    """gemm_half.round_activations (the prompt path's rounding) gives common.f16_round / bf16_round's bits on
    random bit patterns (NaN, inf, subnormals, overflow past 65504 included) and on small / large normals;
    NaN stays NaN (its payload may differ for F16: numpy and vcvtps2ph quiet it differently; never read)."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2 ** 32, (60, 1001), dtype=np.uint64).astype(np.uint32).view(np.float32)
    x[:20] = rng.standard_normal((20, 1001)).astype(np.float32) * 1e-5  # f16 subnormals, ties
    x[20:30] = rng.standard_normal((10, 1001)).astype(np.float32) * 7e4  # f16 overflow
    out = np.empty_like(x)
    gemm_half.round_activations(x, bf16, out)
    with np.errstate(over="ignore"):
        ref = bf16_round(x) if bf16 else f16_round(x)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(out), nan)
    np.testing.assert_array_equal(out[~nan].view(np.uint32), ref[~nan].view(np.uint32))
