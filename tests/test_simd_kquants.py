"""The explicit-SIMD decode kernels of Q2_K, Q3_K and Q5_K (kquants_simd.py) on every level this CPU runs.

Reference: gguf.quants.dequantize, then a float64 matmul with the activations as llama.cpp's Q8_K sees them
(q8.fake_quant_q8_k). The kernels sum the integer products exactly (int32 lanes, integer sub-block scales) and
scale per super-block (Q5_K: per 64-weight chunk) in f32, so the only error is f32 accumulation order over at
most a few hundred terms: 1e-5 of the output's max magnitude (about 100 f32 ulps of that scale; measured ~1e-7).
Levels this CPU lacks are skipped with the reason (their instructions would fault); "generic" (plain LLVM
vectors, 16 bytes) runs everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from llamacpy.kernels import isa, q8, simd
from llamacpy.kernels import kquants_simd as KS
from llamacpy.kernels.common import BLOCK
from test_kernels import SCALE_OFFSETS, random_blocks

LEVELS = ["avx512vnni", "avxvnni", "avx2", "neon", "generic"]
TYPES = [T.Q5_K, T.Q3_K, T.Q2_K]
HAVE = isa.available()


def _need(level):
    if level not in HAVE:
        pytest.skip(f"this CPU ({isa.host_cpu_name()}) cannot run {level}; it runs {', '.join(HAVE)}")


def _run(typ, level, raw, n_out, n_in, x):
    """y (n_tok, n_out) from the level's kernel."""
    packed = KS.repack_rows(int(typ), raw, n_out, n_in, level)
    qx, d, bsums = q8.quantize_q8_k(x)
    y = np.full((x.shape[0], n_out), np.nan, np.float32)
    KS.MV[int(typ)](simd.token(level), *packed, *KS.prep(int(typ), level, qx, d, bsums), y)
    return y


def _ref(typ, raw, n_out, n_in, x):
    w = dequantize(raw, typ).reshape(n_out, n_in).astype(np.float64)
    return q8.fake_quant_q8_k(x).astype(np.float64) @ w.T


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("typ", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_out,n_in", [(1, 256), (37, 768), (9, 2304), (4, 1280)])
def test_simd_kquant_matches_reference(level, typ, n_out, n_in):
    """1, 3, 5 and 9 super-blocks per row: odd counts leave Q3_K's last 3rd-bit vector half empty at width 64
    and pad Q5_K's chunk groups; 1..8 tokens (the decode path's batch sizes)."""
    _need(level)
    rng = np.random.default_rng(n_out * 7 + n_in + int(typ))
    raw = random_blocks(int(typ), n_out, n_in, rng)
    for n in (1, 3, 8):
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        ref = _ref(typ, raw, n_out, n_in, x)
        y = _run(typ, level, raw, n_out, n_in, x)
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max(), (level, n)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("typ", TYPES, ids=lambda t: t.name)
def test_extreme_quants(level, typ):
    """Every quant / scale / high-bit byte 0x00 or 0xFF (Q5_K q 0 or 31, scales and mins 0 or 63; Q3_K u 0 or 7,
    scales -32 or 31; Q2_K q 0 or 3, scales and mins 0 or 15), f16 scales 1.0, activations +-127 with Q8_K's
    |d| = 1: the integer sums are at their largest, so any int16 saturation (avx2's pmaddubsw), sign slip or
    dropped bit is far outside the f32-order tolerance (1e-6 of the max here: the f32 terms are exact integers,
    only their final sum may round)."""
    _need(level)
    rng = np.random.default_rng(int(typ))
    n_out, n_in = 5, 768
    bs, nbytes = BLOCK[int(typ)]
    raw = np.where(rng.random((n_out, n_in // bs, nbytes)) < 0.5, 0, 255).astype(np.uint8)
    for o in SCALE_OFFSETS[int(typ)]:
        raw[:, :, o:o + 2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    raw = raw.reshape(n_out, -1)
    x = np.where(rng.random((2, n_in)) < 0.5, -127.0, 127.0).astype(np.float32)
    qx, d, _ = q8.quantize_q8_k(x)
    assert np.all(np.abs(d) == 1.0) and np.all(np.abs(qx) == 127)
    ref = _ref(typ, raw, n_out, n_in, x)
    y = _run(typ, level, raw, n_out, n_in, x)
    assert np.abs(y - ref).max() <= 1e-6 * np.abs(ref).max(), level


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("typ", TYPES, ids=lambda t: t.name)
def test_rows_and_tokens_independent_of_the_call(level, typ):
    """A (row, token) result is bitwise the same whether computed with 7 rows and 8 tokens, one row, or one
    token (prefix reuse and batching rely on it), and for rows concatenated as FusedLinear does."""
    _need(level)
    rng = np.random.default_rng(int(typ) + 1)
    n_out, n_in = 7, 1280
    raw = random_blocks(int(typ), n_out, n_in, rng)
    x = rng.standard_normal((8, n_in)).astype(np.float32)
    y = _run(typ, level, raw, n_out, n_in, x)
    for r in (0, 4, 6):
        assert np.array_equal(_run(typ, level, raw[r:r + 1], 1, n_in, x)[:, 0], y[:, r]), r
    for t in (0, 5):
        assert np.array_equal(_run(typ, level, raw, n_out, n_in, x[t:t + 1])[0], y[t]), t
    parts = [KS.repack_rows(int(typ), raw[a:b], b - a, n_in, level) for a, b in ((0, 3), (3, 7))]
    fused = tuple(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0])))
    qx, d, bsums = q8.quantize_q8_k(x)
    yf = np.empty_like(y)
    KS.MV[int(typ)](simd.token(level), *fused, *KS.prep(int(typ), level, qx, d, bsums), yf)
    assert np.array_equal(yf, y)
