"""The register-tiled prompt GEMMs (kernels/gemm_simd.py) on every SIMD level this CPU runs.

Q4_0 / Q8_0 (legacy_simd's layout, Q8_0 activations) and Q4_K / Q6_K (kquants_simd's, Q8_K). Two checks per
case. (1) Bit for bit against the decode kernel of the same type and level, called on the same
repacked weights 8 tokens and 1 token at a time: that is what keeps prefix reuse, the engine's batching and the
golden tests exact (a row's result must not depend on the batch). (2) Against the numpy reference (gguf's
dequantize, float64 matmul with the activations as llama.cpp's Q8_0 / Q8_K sees them) with test_simd.py's
tolerance: 1e-5 of the output's max magnitude (exact integer sums, per-block f32 scaling: only f32 accumulation
order differs from float64, ~100 ulps at that scale for at most a few hundred terms; measured ~1e-7).
Shapes: odd row counts (partial row tiles), rows of 1..65 blocks (padding to the widest level's group),
9 / 17 / 64 / 100 tokens (partial token tiles, more than one token block).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from llamacpy.kernels import gemm_simd, isa, kquants_simd, legacy_simd, make_linear, q8, simd
from llamacpy.kernels.linear import DECODE_MAX, fuse_linears, uses_simd
from test_kernels import random_blocks

LEVELS = ["avx512vnni", "avxvnni", "avx2", "neon", "generic"]
HAVE = isa.available()
TOKENS = (9, 17, 64, 100)


def _need(level):
    if level not in HAVE:
        pytest.skip(f"this CPU ({isa.host_cpu_name()}) cannot run {level}; it runs {', '.join(HAVE)}")


def _extreme(typ, raw, rng):
    """Half the rows at the quant extremes (Q8_0 -128 / 127, Q4_0 nibbles 0 / 15): int16 saturation, the sign
    trick's |-128|, the VNNI +128 offset all show up there."""
    n_out = raw.shape[0]
    blk = raw.reshape(n_out, -1, 34 if typ == T.Q8_0 else 18)
    pick = rng.integers(0, 2, blk[::2, :, 2:].shape).astype(bool)
    if typ == T.Q8_0:
        blk[::2, :, 2:] = np.where(pick, np.uint8(0x80), np.uint8(0x7F))
    else:
        blk[::2, :, 2:] = np.where(pick, np.uint8(0xF0), np.uint8(0x0F))
    return raw


def _decode(typ, tok, packed, act, n, n_out, step):
    mod = kquants_simd if typ >= 10 else legacy_simd
    y = np.full((n, n_out), np.nan, np.float32)
    for a in range(0, n, step):
        mod.MV[int(typ)](tok, *packed, *[v[a:a + step] for v in act], y[a:a + step])
    return y


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("typ", [T.Q4_0, T.Q8_0], ids=lambda t: t.name)
@pytest.mark.parametrize("n_out,n_in", [(1, 32), (37, 96), (70, 2080)])
def test_gemm_matches_decode_bitwise_and_reference(level, typ, n_out, n_in):
    _need(level)
    rng = np.random.default_rng(n_out * 1000 + n_in + int(typ))
    raw = _extreme(typ, random_blocks(int(typ), n_out, n_in, rng), rng)
    w = dequantize(raw, typ).reshape(n_out, n_in).astype(np.float64)
    packed = legacy_simd.repack_rows(int(typ), raw, n_out, n_in, level)
    tok = simd.token(level)
    for n in TOKENS:
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        x[::3] = np.where(x[::3] > 0, 1.0, -1.0)  # every third token at +-127 after Q8_0 quantization
        qx, dx, _ = q8.quantize_q8_0(x)
        act = legacy_simd.prep(int(typ), level, qx, dx)
        y = np.full((n, n_out), np.nan, np.float32)
        gemm_simd.GEMM[int(typ)](tok, gemm_simd.prompt_tile(int(typ), level), *packed, *act, y)
        for step in (DECODE_MAX, 1):
            np.testing.assert_array_equal(y.view(np.uint32), _decode(typ, tok, packed, act, n, n_out, step)
                                          .view(np.uint32), err_msg=f"{level} n={n} step={step}")
        ref = q8.fake_quant_q8_0(x).astype(np.float64) @ w.T
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max(), (level, n)


@pytest.mark.parametrize("typ", [T.Q4_0, T.Q8_0, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_linear_prompt_rows_independent_of_batch(typ):
    """Through make_linear / fuse_linears on this process's level: a prompt of 17 tokens (the GEMM path) gives
    every token the same bits as decoding it alone, and as any prefix of the prompt does."""
    rng = np.random.default_rng(5 + int(typ))
    n_in = 512
    if not uses_simd(int(typ)):  # LLAMACPY_ISA=generic: prompts on f32 tiles + sgemm, rows depend on the call
        assert not make_linear(int(typ), random_blocks(int(typ), 8, n_in, rng), (8, n_in), "g").prompt_by_decode
        return
    parts = []
    for n_out in (64, 64, 37):
        raw = random_blocks(int(typ), n_out, n_in, rng)
        parts.append(make_linear(int(typ), raw, (n_out, n_in), f"p{n_out}"))
    lin = make_linear(int(typ), random_blocks(int(typ), 45, n_in, rng), (45, n_in), "lin")
    x = rng.standard_normal((17, n_in)).astype(np.float32)
    y = lin(x)
    one = np.concatenate([lin(x[i:i + 1]) for i in range(17)])
    np.testing.assert_array_equal(y, one)
    np.testing.assert_array_equal(lin(x[:13]), y[:13])
    strided = np.full((17, 2 * 45), np.nan, np.float32)[:, ::2]  # a caller's non-contiguous out= view
    assert lin(x, out=strided) is strided
    np.testing.assert_array_equal(strided, y)
    f = fuse_linears(parts)
    yf = f(x)
    np.testing.assert_array_equal(yf, np.concatenate([f(x[i:i + 1]) for i in range(17)]))
    np.testing.assert_array_equal(f(x[:11]), yf[:11])


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("typ", [T.Q4_K, T.Q6_K], ids=lambda t: t.name)
@pytest.mark.parametrize("n_out,n_in", [(1, 256), (37, 768), (70, 2304)])
def test_kquant_gemm_matches_decode_bitwise_and_reference(level, typ, n_out, n_in):
    """Q4_K / Q6_K on Q8_K activations: 1, 3, 9 super-blocks per row (Q4_K: padding to the level's chunk
    groups), with random scale / min bytes (6-bit scales up to 63, Q6_K's int8 scales down to -128)."""
    _need(level)
    rng = np.random.default_rng(n_out * 1000 + n_in + int(typ))
    raw = random_blocks(int(typ), n_out, n_in, rng)
    w = dequantize(raw, typ).reshape(n_out, n_in).astype(np.float64)
    packed = kquants_simd.repack_rows(int(typ), raw, n_out, n_in, level)
    tok = simd.token(level)
    for n in TOKENS:
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        x[::3] = np.where(x[::3] > 0, 1.0, -1.0)  # every third token at the Q8_K extremes
        act = kquants_simd.prep(int(typ), level, *q8.quantize_q8_k(x)[:3])
        y = np.full((n, n_out), np.nan, np.float32)
        gemm_simd.GEMM[int(typ)](tok, gemm_simd.prompt_tile(int(typ), level), *packed, *act, y)
        for step in (DECODE_MAX, 1):
            np.testing.assert_array_equal(y.view(np.uint32), _decode(typ, tok, packed, act, n, n_out, step)
                                          .view(np.uint32), err_msg=f"{level} n={n} step={step}")
        ref = q8.fake_quant_q8_k(x).astype(np.float64) @ w.T
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max(), (level, n)


# -- decode calls (1..DECODE_MAX tokens) through the small tiles (gemm_simd.SMALL) ------------------------------
def _small_tiles(typ, level):
    """The distinct tiles SMALL gives the type at the level (n = 1..8), else (levels without a table) a spread 2x3.
    At the levels this process does not run, only those of n = 1 and 4 (fewer compilations in the default run;
    test_small_tiles_all_levels_bitwise, marked slow, covers every table entry on every level)."""
    tab = gemm_simd.SMALL.get(int(typ), {}).get(level, {})
    if level != isa.level():
        tab = {n: t for n, t in tab.items() if n in (1, 4)}
    return sorted(set(tab.values())) or [(2, 3, True)]


def _small_case(typ, level, n_out, n_in, tiles, ns, seed):
    rng = np.random.default_rng(seed)
    raw = random_blocks(int(typ), n_out, n_in, rng)
    if typ in (T.Q4_0, T.Q8_0):
        raw = _extreme(typ, raw, rng)
    kq = typ >= 10
    mod = kquants_simd if kq else legacy_simd
    packed = mod.repack_rows(int(typ), raw, n_out, n_in, level)
    tok = simd.token(level)
    for n in ns:
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        x[::3] = np.where(x[::3] > 0, 1.0, -1.0)
        act = mod.prep(int(typ), level, *(q8.quantize_q8_k(x)[:3] if kq else q8.quantize_q8_0(x)[:2]))
        one = _decode(typ, tok, packed, act, n, n_out, 1).view(np.uint32)  # each token alone
        for t in tiles:
            y = np.full((n, n_out), np.nan, np.float32)
            gemm_simd.GEMM[int(typ)](tok, gemm_simd.tile(*t), *packed, *act, y)
            np.testing.assert_array_equal(y.view(np.uint32), one, err_msg=f"{level} tile {t} n={n}")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("typ", [T.Q4_0, T.Q8_0, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_small_tiles_match_decode_bitwise(level, typ):
    """Every tile the decode-batch table uses at the level (spread rows, partial row tiles: 37 and 5 rows; partial
    token tiles: n not a multiple of TT) against the decode kernel on each token alone, bit for bit, n = 1..8."""
    _need(level)
    for n_out, n_in in ((37, 2304 if typ >= 10 else 2080), (5, 768 if typ >= 10 else 96)):  # 9 / 65 blocks a row
        _small_case(typ, level, n_out, n_in, _small_tiles(typ, level), range(1, DECODE_MAX + 1),
                    n_out + int(typ))


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("typ", [T.Q4_0, T.Q8_0, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_small_tiles_all_levels_bitwise(level, typ):
    """Every tile SMALL has for the type at the level (all n, not only n = 1 / 4) and the prompt tile, on every
    level this CPU runs (slow: the compilations). Only tiles checked here may enter the tables: the f32 part is
    written with fast-math flags (as the decode kernels' simd.vmul / vfma are), and LLVM reassociates
    d_w * d_x * isum differently in some contexts -- measured: avx2 1x1 and generic 4x3 differ from mv in the
    last bit on ~1 % of outputs (neither is used), every tile in the tables matches."""
    _need(level)
    tiles = sorted(set(gemm_simd.SMALL.get(int(typ), {}).get(level, {}).values()))
    tiles.append((*(gemm_simd.TILE_K[int(typ)][level] if int(typ) in gemm_simd.TILE_K else gemm_simd.TILE[level]),
                  False))
    _small_case(typ, level, 23, 2304 if typ >= 10 else 2080, tiles, (1, 3, 4, 8), 7 + int(typ))


@pytest.mark.parametrize("typ", [T.Q4_0, T.Q8_0, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_linear_decode_batches_independent_of_batch(typ):
    """Through make_linear / fuse_linears on this process's level: every decode call of 1..8 tokens (the small
    tiles where the table has them) gives each token the bits of decoding it alone -- what keeps the server's
    batched steps exact."""
    rng = np.random.default_rng(11 + int(typ))
    n_in = 512
    lin = make_linear(int(typ), random_blocks(int(typ), 45, n_in, rng), (45, n_in), "lin")
    f = fuse_linears([make_linear(int(typ), random_blocks(int(typ), m, n_in, rng), (m, n_in), f"p{m}")
                      for m in (64, 37)])
    x = rng.standard_normal((DECODE_MAX, n_in)).astype(np.float32)
    alone = np.concatenate([lin(x[i:i + 1]) for i in range(DECODE_MAX)])
    alone_f = np.concatenate([f(x[i:i + 1]) for i in range(DECODE_MAX)])
    for n in range(2, DECODE_MAX + 1):
        np.testing.assert_array_equal(lin(x[:n]), alone[:n], err_msg=f"n={n}")
        np.testing.assert_array_equal(f(x[:n]), alone_f[:n], err_msg=f"fused n={n}")
    strided = np.full((4, 2 * 45), np.nan, np.float32)[:, ::2]  # a caller's non-contiguous out= view
    assert lin(x[:4], out=strided) is strided
    np.testing.assert_array_equal(strided, alone[:4])
