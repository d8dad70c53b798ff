"""The explicit-SIMD decode kernels for Q4_1, Q5_0, Q5_1 (legacy_simd.py) and F16 / BF16 (dense_simd.py), on every
level this CPU runs (the kernels take the level's token, so each level is compiled and run here, whatever
LLAMACPY_ISA says).

Reference: gguf.quants.dequantize (not our code), then a float64 matmul with the activations as llama.cpp's
kernels see them: Q8_0 (dx * qx) for Q5_0; for Q4_1 / Q5_1 llama.cpp's vec_dot_q4_1_q8_1 form
d*dx*sum(q*qx) + m*s, with Q8_1's s = f16(dx * sum qx) -- i.e. (w - m) . (dx*qx) + m * s, the min m read from the
block bytes; F16 / BF16: the weights' exact values times the activations rounded to the weight type. The kernels'
integer sums are exact, so the only error is f32 rounding of at most a few hundred per-block terms (F16/BF16: of
n_in / (4 * lanes) accumulator steps, then a fixed 4-vector + lane reduction): 1e-5 of the output's max
magnitude (measured ~1e-7).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from llamacpy.kernels import dense_simd, isa, legacy_simd, q8, simd
from llamacpy.kernels.common import bf16_round, f16_round
from test_kernels import random_blocks

LEVELS = ["avx512vnni", "avxvnni", "avx2", "neon"]
HAVE = isa.available()
MORE = [T.Q4_1, T.Q5_0, T.Q5_1]
MIN_AT = {T.Q4_1: 2, T.Q5_1: 2}  # byte offset of the f16 min in a block
TOL = 1e-5  # of max |ref|: f32 accumulation order only (see the module doc)


def _need(level):
    if level not in HAVE:
        pytest.skip(f"this CPU ({isa.host_cpu_name()}) cannot run {level}; it runs {', '.join(HAVE)}")


def _reference(typ, raw, n_out, n_in, x):
    w = dequantize(raw, typ).reshape(n_out, n_in).astype(np.float64)
    qx, dx, sx = q8.quantize_q8_0(x)
    xr = (qx.astype(np.float64).reshape(len(x), -1, 32) * dx[:, :, None]).reshape(len(x), n_in)  # (n, n_in)
    if typ not in MIN_AT:
        return xr @ w.T
    o = MIN_AT[typ]
    blk = raw.reshape(n_out, n_in // 32, -1)
    m = np.ascontiguousarray(blk[:, :, o:o + 2]).view(np.float16)[:, :, 0].astype(np.float64)  # (n_out, nb)
    return xr @ (w - np.repeat(m, 32, axis=1)).T + sx.astype(np.float64) @ m.T


def _run(typ, level, packed, x):
    qx, dx, sx = q8.quantize_q8_0(x)
    y = np.full((len(x), packed[0].shape[0]), np.nan, np.float32)
    legacy_simd.MV[int(typ)](simd.token(level), *packed, *legacy_simd.prep(int(typ), level, qx, dx, sx), y)
    return y


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("typ", MORE, ids=lambda t: t.name)
@pytest.mark.parametrize("n_out,n_in", [(1, 32), (37, 96), (9, 2080)])
def test_more_legacy_match_reference(level, typ, n_out, n_in):
    """1, 3 and 65 blocks per row (padding to the 16-block groups), odd row counts, 1..8 tokens; each token's
    row bit for bit the same as in a one-token call, and a weight row's outputs as in a one-row call (batch
    independence)."""
    _need(level)
    rng = np.random.default_rng(n_out * 1000 + n_in + int(typ))
    raw = random_blocks(int(typ), n_out, n_in, rng)
    packed = legacy_simd.repack_rows(int(typ), raw, n_out, n_in, level)
    for n in (1, 3, 8):
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        ref = _reference(typ, raw, n_out, n_in, x)
        y = _run(typ, level, packed, x)
        assert np.abs(y - ref).max() <= TOL * np.abs(ref).max(), (level, n)
        assert np.array_equal(y[n - 1], _run(typ, level, packed, x[n - 1:])[0]), (level, n)
        k = n_out // 2  # and one weight row alone gives the same bits as inside the whole matrix
        alone = legacy_simd.repack_rows(int(typ), raw[k:k + 1], 1, n_in, level)
        assert np.array_equal(y[:, k], _run(typ, level, alone, x)[:, 0]), (level, n)


@pytest.mark.parametrize("level", LEVELS[:3])
@pytest.mark.parametrize("typ", MORE, ids=lambda t: t.name)
def test_more_legacy_extremes_exact(level, typ):
    """Weights at their extremes (5-bit: 0 and 31 with every 5th bit set / clear; 4-bit: 0 and 15) times
    activations at +-127, scale 1, min 0: y is the integer dot product itself, so any int16 saturation
    (pmaddubsw), lost 5th bit or wrong offset shows as an exact mismatch."""
    _need(level)
    one = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    zero = np.zeros(2, np.uint8)
    nib = np.array([0xF0, 0x0F] * 8, np.uint8)
    for qh in (np.uint32(0xFFFF0000), np.uint32(0x0000FFFF), np.uint32(0xA5A5A5A5)):
        hb = np.frombuffer(qh.tobytes(), np.uint8)
        fields = {T.Q4_1: [one, zero, nib], T.Q5_0: [one, hb, nib], T.Q5_1: [one, zero, hb, nib]}[typ]
        raw = np.concatenate(fields)[None]  # (1, bytes): one block
        w = dequantize(raw, typ).reshape(1, 32).astype(np.float64)
        assert np.abs(w).max() >= 15
        for sign in (1, -1):
            x = sign * np.where(np.arange(32) % 3 == 0, -127.0, 127.0).astype(np.float32)[None]
            qx, dx, sx = q8.quantize_q8_0(x)
            assert dx[0, 0] == 1.0 and np.all(np.abs(qx) == 127)
            y = _run(typ, level, legacy_simd.repack_rows(int(typ), raw, 1, 32, level), x)
            # Q4_1 / Q5_1: m = 0, so only d * sum(q * qx) remains; Q5_0: sum((q - 16) * qx)
            assert y[0, 0] == (w @ qx[0].astype(np.float64))[0], (typ.name, level, hex(int(qh)))


def _half(bf, n_out, n_in, rng, extreme=False):
    """Random weights as (bits (n_out, n_in) uint16, their exact values f64)."""
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    if extreme:  # magnitudes from f16 subnormals (< 2**-14) up to 7 * 2**13 = 57344 (f16 max 65504)
        w = np.clip(w, -7, 7) * np.float32(2.0) ** rng.integers(-20, 14, size=w.shape).astype(np.float32)
    if bf:
        bits = (bf16_round(w).view(np.uint32) >> 16).astype(np.uint16)
        vals = (bits.astype(np.uint32) << 16).view(np.float32)
    else:
        bits = w.astype(np.float16).view(np.uint16)
        vals = bits.view(np.float16).astype(np.float32)
    return bits, vals.astype(np.float64)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("bf", [False, True], ids=["F16", "BF16"])
@pytest.mark.parametrize("n_out,n_in", [(1, 7), (37, 96), (5, 1000), (3, 2048 + 48)])
def test_half_matches_reference(level, bf, n_out, n_in):
    """n_in below one vector, between whole 4-vector steps and whole vectors, with a scalar tail; 1..8 tokens
    (odd counts take the single-token loop for the last one); each token bit for bit as in a one-token call, each
    weight row as in a one-row call (the one-token loop reads rows r and r + ceil(n_out / 2) together; a
    one-row call reads its row alone)."""
    _need(level)
    rng = np.random.default_rng(n_out * 31 + n_in + bf)
    bits, vals = _half(bf, n_out, n_in, rng, extreme=n_out == 5)
    w = dense_simd.weights(bits, bf)
    rnd = bf16_round if bf else f16_round
    tok = simd.token(level)
    for n in (1, 2, 5, 8):
        x = rnd(rng.standard_normal((n, n_in)).astype(np.float32))
        ref = x.astype(np.float64) @ vals.T
        y = np.full((n, n_out), np.nan, np.float32)
        dense_simd.mv_half(tok, w, x, y)
        assert np.abs(y - ref).max() <= TOL * np.abs(ref).max(), (level, n)
        for t in range(n):
            y1 = np.empty((1, n_out), np.float32)
            dense_simd.mv_half(tok, w, x[t:t + 1].copy(), y1)
            assert np.array_equal(y1[0], y[t]), (level, n, t)
        for k in sorted({0, n_out // 2, (n_out + 1) // 2, n_out - 1} - {n_out}):  # both rows of a 2-row job
            yk = np.empty((n, 1), np.float32)
            dense_simd.mv_half(tok, np.ascontiguousarray(w[k:k + 1]), x, yk)
            assert np.array_equal(yk[:, 0], y[:, k]), (level, n, k)


def test_linear_uses_the_simd_kernels_and_matches_generic():
    """make_linear's decode of each new type goes through the SIMD kernels at this process's level (unless it
    is generic) and agrees with the generic kernels of legacy.py / dense.py to f32 accumulation order."""
    from llamacpy.kernels import dense, legacy, linear

    rng = np.random.default_rng(5)
    n_out, n_in = 67, 320
    x = rng.standard_normal((3, n_in)).astype(np.float32)
    for typ in MORE:
        raw = random_blocks(int(typ), n_out, n_in, rng)
        lin = linear.make_linear(int(typ), raw, (n_out, n_in), "w")
        y = lin(x)
        assert linear.uses_simd(int(typ)) == (isa.level() != "generic")
        g = np.empty_like(y)
        legacy_mv = {T.Q4_1: legacy.mv_q4_1, T.Q5_0: legacy.mv_q5_0, T.Q5_1: legacy.mv_q5_1}[typ]
        legacy_mv(*legacy.repack(int(typ), raw, n_out, n_in, 64), *q8.quantize_q8_0(x), g)
        assert np.abs(y - g).max() <= TOL * np.abs(g).max(), typ.name
    for typ, bf in ((T.F16, False), (T.BF16, True)):
        bits, _ = _half(bf, n_out, n_in, rng)
        lin = linear.make_linear(int(typ), bits.view(np.uint8), (n_out, n_in), "w")
        y = lin(x)
        g = np.empty_like(y)
        dense.mv_half(bits, dense.KIND_BF16 if bf else dense.KIND_F16, (bf16_round if bf else f16_round)(x), g)
        assert np.abs(y - g).max() <= TOL * np.abs(g).max(), typ.name
