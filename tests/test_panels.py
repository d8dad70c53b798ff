"""Q4_0 / Q8_0 rows longer than 8192 weights: legacy_simd's panel-major layout and gemm_simd's chunked walk.

What must hold (legacy_simd's and gemm_simd's module docs):
- `_nbp` / `panel_blocks`: rows of <= 256 blocks keep the one-panel layout of before (padding to 16 blocks);
  longer rows get P equal panels of a multiple of 16 blocks, at most 256, covering the row.
- repack_rows puts block b of row r at its panel-major place (checked on the f16 scales, the exact bytes).
- The decode kernels on that layout match the numpy reference (gguf dequantize, float64 matmul of the
  activations as llama.cpp's Q8_0 sees them) within test_simd.py's tolerance, 1e-5 of the output's max
  magnitude (exact integer sums, per-block f32 scaling: f32 accumulation order only).
- Every GEMM tile the decode and prompt paths use, and the chunked walk (spread tiles over several panels;
  explicit kc / bk tokens), give each (row, token) the decode kernel's bits on each token alone -- the
  kernel numerics rule (prefix reuse, batching, golden tests) -- on the levels this CPU runs.
- FusedLinear's parts of several panels (concat_rows) give the parts' own results bit for bit.
Shapes: 257 blocks (the smallest two-panel row, padded to 2 x 144) and the 7B's 11008 (2 x 176), odd row counts
(partial row tiles and partial chunk blocks).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from llamacpy.kernels import gemm_simd, isa, legacy_simd, make_linear, q8, simd
from llamacpy.kernels.linear import DECODE_MAX, fuse_linears
from test_kernels import random_blocks

HAVE = isa.available()
LEVELS = ["avx512vnni", "avxvnni", "avx2", "generic"]
SHAPES = [(37, 8224), (5, 11008)]


def _need(level):
    if level not in HAVE:
        pytest.skip(f"this CPU ({isa.host_cpu_name()}) cannot run {level}; it runs {', '.join(HAVE)}")


def test_panel_sizes():
    for nb_ in range(1, 1200):
        nbp = legacy_simd._nbp(32 * nb_)
        pb = int(legacy_simd.panel_blocks(nbp))
        assert nbp >= nb_ and nbp % pb == 0 and pb % legacy_simd.GROUP_BLOCKS == 0 and pb <= 256, nb_
        if nb_ <= 256:
            assert pb == nbp == -(-nb_ // 16) * 16, nb_  # one panel: the layout of before
        else:
            assert nbp - nb_ < 16 * (nbp // pb), nb_  # less than one group of padding per panel
    assert legacy_simd._nbp(11008) == 352 and legacy_simd.panel_blocks(352) == 176
    assert legacy_simd._nbp(8224) == 288 and legacy_simd.panel_blocks(288) == 144


@pytest.mark.parametrize("typ", [T.Q4_0, T.Q8_0], ids=lambda t: t.name)
def test_repack_panel_major(typ):
    rng = np.random.default_rng(3)
    n_out, n_in = 7, 8224
    raw = random_blocks(int(typ), n_out, n_in, rng)
    qs, d = legacy_simd.repack_rows(int(typ), raw, n_out, n_in, "avx2")
    nbp = d.shape[1]
    pb = int(legacy_simd.panel_blocks(nbp))
    scales = raw.reshape(n_out, n_in // 32, -1)[:, :, :2].copy().view(np.uint16)[:, :, 0]  # (n_out, nb)
    df = d.reshape(-1)
    for r in range(n_out):
        for b in range(nbp):
            p, bi = divmod(b, pb)
            want = scales[r, b] if b < n_in // 32 else 0
            assert df[(p * n_out + r) * pb + bi] == want, (r, b)


@pytest.mark.parametrize("level", ["avx512vnni", "avxvnni", "avx2"])
@pytest.mark.parametrize("typ", [T.Q4_0, T.Q8_0], ids=lambda t: t.name)
def test_panel_matvec_matches_reference(level, typ):
    _need(level)
    tok = simd.token(level)
    for n_out, n_in in SHAPES:
        rng = np.random.default_rng(n_out + int(typ))
        raw = random_blocks(int(typ), n_out, n_in, rng)
        w = dequantize(raw, typ).reshape(n_out, n_in).astype(np.float64)
        packed = legacy_simd.repack_rows(int(typ), raw, n_out, n_in, level)
        x = rng.standard_normal((3, n_in)).astype(np.float32)
        ref = q8.fake_quant_q8_0(x).astype(np.float64) @ w.T
        y = np.full((3, n_out), np.nan, np.float32)
        legacy_simd.MV[int(typ)](tok, *packed, *legacy_simd.prep(int(typ), level, *q8.quantize_q8_0(x)[:2]), y)
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max(), (level, n_out, n_in)
        y2 = np.full((3, n_out), np.nan, np.float32)
        legacy_simd.MVX[int(typ)](tok, *packed, x, *legacy_simd.mvx_args(int(typ), level), y2)
        np.testing.assert_array_equal(y2, y)


def _tiles(typ, level, everything):
    """This level's SMALL tiles (here: all; other levels: n = 1 and 4 unless `everything`), the prompt tile,
    and explicit chunked tokens (kc = 5 groups: chunks that cross no panel edge and ones that do; bk = 3: partial
    blocks)."""
    tab = gemm_simd.SMALL.get(int(typ), {}).get(level, {})
    if level != isa.level() and not everything:
        tab = {n: t for n, t in tab.items() if n in (1, 4)}
    tiles = [gemm_simd.tile(*t) for t in sorted(set(tab.values()))] or [gemm_simd.tile(2, 3, True)]
    tiles.append(gemm_simd.prompt_tile(int(typ), level))
    tiles.append(gemm_simd.tile(3, 1, True, 5, 3))
    tiles.append(gemm_simd.tile(2, 2, False, 5, 3))
    return tiles


def _tiles_case(typ, level, everything):
    tok = simd.token(level)
    for n_out, n_in in SHAPES:
        rng = np.random.default_rng(n_out * 7 + int(typ))
        raw = random_blocks(int(typ), n_out, n_in, rng)
        packed = legacy_simd.repack_rows(int(typ), raw, n_out, n_in, level)
        for n in (1, 2, 4, 8, 11):
            x = rng.standard_normal((n, n_in)).astype(np.float32)
            act = legacy_simd.prep(int(typ), level, *q8.quantize_q8_0(x)[:2])
            one = np.full((n, n_out), np.nan, np.float32)
            for t in range(n):  # each token alone through the decode kernel
                legacy_simd.MV[int(typ)](tok, *packed, *[a[t:t + 1] for a in act], one[t:t + 1])
            for tl in _tiles(typ, level, everything):
                y = np.full((n, n_out), np.nan, np.float32)
                gemm_simd.GEMM[int(typ)](tok, tl, *packed, *act, y)
                np.testing.assert_array_equal(y.view(np.uint32), one.view(np.uint32),
                                              err_msg=f"{level} {tl} {n_out}x{n_in} n={n}")


@pytest.mark.parametrize("level", ["native", "avx2"])
@pytest.mark.parametrize("typ", [T.Q4_0, T.Q8_0], ids=lambda t: t.name)
def test_panel_tiles_match_decode_bitwise(level, typ):
    """The default run: this process's level (as production picks it) and avx2; every level: the slow test."""
    level = isa.level() if level == "native" else level
    _need(level)
    _tiles_case(typ, level, False)


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("typ", [T.Q4_0, T.Q8_0], ids=lambda t: t.name)
def test_panel_tiles_all_levels_bitwise(level, typ):
    _need(level)
    _tiles_case(typ, level, True)


@pytest.mark.parametrize("typ", [T.Q4_0, T.Q8_0], ids=lambda t: t.name)
def test_fused_panels_match_parts(typ):
    """make_linear / fuse_linears on this process's level: a fused matrix of two-panel parts (the parts' packed
    arrays stacked panel by panel) gives each part's own bits, one token and batches of 2..8."""
    rng = np.random.default_rng(21 + int(typ))
    n_in = 8224
    parts = [make_linear(int(typ), random_blocks(int(typ), m, n_in, rng), (m, n_in), f"p{m}") for m in (40, 23)]
    x = rng.standard_normal((DECODE_MAX, n_in)).astype(np.float32)
    want = np.concatenate([p(x[:1]) for p in parts], axis=1)
    want_n = np.concatenate([p(x) for p in parts], axis=1)
    f = fuse_linears([make_linear(int(typ), p.raw, (p.n_out, n_in), p.name) for p in parts])
    np.testing.assert_array_equal(f(x[:1]), want)
    np.testing.assert_array_equal(f(x), want_n)
    alone = np.concatenate([f(x[i:i + 1]) for i in range(DECODE_MAX)])
    np.testing.assert_array_equal(f(x), alone)
