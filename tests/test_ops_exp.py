"""kernels/vexp.py: the vectorized float32 exp and SiLU against a float64 reference, their edge cases, that a
value's result does not depend on its place in a vectorized loop, and the softmax kernels built on them."""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import pytest

from llamacpy.kernels import ops
from llamacpy.kernels.vexp import exp_f32, max_f32, silu_f32


@nb.njit(cache=True, fastmath=True)
def _exp_loop(x, out):  # the way the kernels use it: inside a fast-math loop that LLVM vectorizes
    for i in range(x.shape[0]):
        out[i] = exp_f32(x[i])


@nb.njit(cache=True, fastmath=True)
def _silu_loop(x, out):
    for i in range(x.shape[0]):
        out[i] = silu_f32(x[i])


def _exp(x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    _exp_loop(x, out)
    return out


def _ulps(got, ref64):
    """|got - ref| in units of the float32 spacing at the correctly rounded result."""
    spacing = np.spacing(np.abs(ref64).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - ref64) / spacing


def test_exp_error_bound_on_dense_grid():
    """Normal results (x in [-87.3, 88.7]) within 2 ulp of exp: the polynomial's own error is 1.7e-8 (0.15 ulp),
    the rest is float32 rounding in the reduction and Horner steps (measured max ~1.0 ulp). math.exp rounded to
    float32 -- what the kernels used before -- is within 0.5 ulp; 2 ulp still bounds the relative error by
    2.4e-7, far below the f16 rounding (4.9e-4) every softmax output goes through."""
    x = np.linspace(-87.3, 88.7, 1_000_003, dtype=np.float32)
    x = np.concatenate([x, np.linspace(-1, 1, 200_001, dtype=np.float32)])  # the softmax/silu bulk, densely
    ulps = _ulps(_exp(x), np.exp(x.astype(np.float64)))
    assert ulps.max() <= 2.0, f"max error {ulps.max():.3f} ulp at x={x[ulps.argmax()]}"


def test_exp_subnormal_range_absolute_error():
    """Below 2^-126 the results are subnormal: correct to within 2 ulp of the smallest normal's spacing."""
    x = np.linspace(-103.9, -87.3, 100_001, dtype=np.float32)
    err = np.abs(_exp(x).astype(np.float64) - np.exp(x.astype(np.float64)))
    assert err.max() <= 2 * 2.0 ** -149


def test_exp_edge_cases():
    x = np.array([0.0, -0.0, -np.inf, -1e30, -104.0, -200.0, np.inf, 1e30, 89.0, 88.8, 1.0, -1.0], np.float32)
    got = _exp(x)
    assert got[0] == 1.0 and got[1] == 1.0  # exp(0) exactly 1: softmax of the max entry
    assert np.all(got[2:6] == 0.0)  # mask value -inf and very negative inputs -> 0, not nan
    assert np.all(np.isposinf(got[6:10]))  # overflow -> inf (silu's exp(-x) for very negative x)
    assert got[10] == np.float32(math.e) and got[11] == np.float32(math.exp(-1.0))
    assert not np.isnan(got).any()


def test_exp_monotone_near_zero():
    """Softmax ranks survive: exp is non-decreasing over a fine grid of the reduced range's both sides."""
    x = np.linspace(-2, 2, 400_001, dtype=np.float32)
    assert np.all(np.diff(_exp(x)) >= 0)


def test_exp_same_bits_whatever_the_position_in_the_loop():
    """A value gives the same bits in a vector lane and in the scalar remainder: every length and offset."""
    rng = np.random.default_rng(1)
    base = (rng.standard_normal(300) * 10).astype(np.float32)
    ref = np.array([_exp(base[i:i + 1])[0] for i in range(base.shape[0])], np.float32)  # one at a time
    for start in (0, 1, 3, 7):
        for n in (1, 5, 15, 16, 17, 31, 64, 100, 293):
            seg = base[start:start + n]
            np.testing.assert_array_equal(_exp(seg), ref[start:start + n])


def test_silu_against_float64():
    x = np.concatenate([np.linspace(-30, 30, 600_001, dtype=np.float32),
                        np.array([0.0, -1e4, 1e4, -np.inf, 200.0, -200.0], np.float32)])
    out = np.empty_like(x)
    _silu_loop(x, out)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = x64 / (1.0 + np.exp(-x64))
    fin = np.isfinite(x)
    # x / (1 + e) adds the division's and the add's roundings to exp's 2 ulp: 4 ulp of the result, or a tiny
    # absolute error where silu crosses zero (the relative error of 1 + e is what counts there)
    err = np.abs(out[fin] - ref[fin])
    assert np.all(err <= 4 * np.spacing(np.abs(ref[fin]).astype(np.float32)) + 1e-30)
    assert out[-6] == 0.0 and out[-5] == 0.0 and out[-4] == 1e4  # silu(-1e4) = -0.0 (exp overflows to inf)
    assert np.isnan(out[-3]) or out[-3] == 0.0  # -inf / inf: no crash, no exception


def test_swiglu_rows_independent_and_accurate():
    """swiglu of a row is the same whatever the rows beside it and the row length's remainder (bit for bit)."""
    rng = np.random.default_rng(2)
    g = (rng.standard_normal((7, 37)) * 4).astype(np.float32)
    u = rng.standard_normal((7, 37)).astype(np.float32)
    out = np.empty_like(g)
    ops.swiglu(g, u, out)
    for t in range(7):
        one = np.empty((1, 37), np.float32)
        ops.swiglu(g[t:t + 1], u[t:t + 1], one)
        np.testing.assert_array_equal(one[0], out[t])
    g64 = g.astype(np.float64)
    ref = g64 / (1 + np.exp(-g64)) * u
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)  # a few float32 roundings


@pytest.mark.parametrize("shape", [(7, 37), (1, 64), (3, 5632)])
def test_swiglu_fused_equals_swiglu_on_the_halves(shape, monkeypatch):
    """The model's [gate | up] matmul output straight into swiglu_fused: bit for bit swiglu on copied halves (one
    thread and split over row ranges)."""
    rng = np.random.default_rng(4)
    n, d = shape
    gu = (rng.standard_normal((n, 2 * d)) * 4).astype(np.float32)
    ref = np.empty((n, d), np.float32)
    ops.swiglu(np.ascontiguousarray(gu[:, :d]), np.ascontiguousarray(gu[:, d:]), ref)
    for mt in (ops.SWIGLU_MT_VALUES, 1):
        monkeypatch.setattr(ops, "SWIGLU_MT_VALUES", mt)
        out = np.full((n, d), np.nan, np.float32)
        ops.swiglu_fused(gu, out)
        np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match="swiglu_fused"):
        ops.swiglu_fused(gu[:, 1:], np.empty((n, d), np.float32))


def _softmax_ref(s, lim, scale):
    v = s[:lim].astype(np.float64) * scale
    e = np.exp(v - v.max())
    return e / e.sum()


@pytest.mark.parametrize("n_kv", [1, 17, 64, 130])
def test_softmax_causal_f16_against_float64(n_kv):
    """Each row: scaled, masked after its cell, softmaxed, rounded to f16; the masked tail exactly 0. Within
    one f16 step (+ float32 noise) of the float64 softmax, and a row gives the same bits alone or in a batch."""
    rng = np.random.default_rng(n_kv)
    m = min(n_kv, 8)
    rows = 3 * m  # 3 query heads of m tokens each
    first = n_kv - m
    s0 = (rng.standard_normal((rows, n_kv)) * 6).astype(np.float32)
    scale = np.float32(0.125)
    s = s0.copy()
    ops._softmax_causal_f16(s, m, first, scale)
    for i in range(rows):
        lim = first + i % m + 1
        ref = _softmax_ref(s0[i], lim, scale)
        np.testing.assert_allclose(s[i, :lim], ref, rtol=2 ** -10, atol=2 ** -24)
        assert np.all(s[i, lim:] == 0.0)
        assert np.all(s[i, :lim] == s[i, :lim].astype(np.float16).astype(np.float32))
        alone = s0[i:i + 1].copy()
        ops._softmax_causal_f16(alone, 1, lim - 1, scale)
        np.testing.assert_array_equal(alone[0], s[i])


def test_softmax_with_inf_scores():
    """-inf scores (a mask in the input) become probability 0; a row of one finite score gives exactly 1."""
    s = np.array([[-np.inf, 2.0, -np.inf, 1.0], [3.0, -np.inf, -np.inf, -np.inf]], np.float32)
    ops._softmax_causal_f16(s, 1, 3, np.float32(1.0))
    assert s[0, 0] == 0.0 and s[0, 2] == 0.0 and not np.isnan(s).any()
    np.testing.assert_allclose(s[0, [1, 3]], [1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))], rtol=2 ** -10)
    assert s[1, 0] == 1.0 and np.all(s[1, 1:] == 0.0)


@nb.njit(cache=True, fastmath=True)
def _max_loop(x, n):
    mx = np.float32(-np.inf)
    for j in range(n):
        mx = max_f32(mx, x[j])
    return mx


def test_max_f32_reduction_exact():
    """The vectorized max reduction finds the exact maximum for every length (lanes and remainder alike)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(200).astype(np.float32)
    x[[5, 77]] = -np.inf
    for n in range(1, 200):
        assert _max_loop(x, n) == x[:n].max()
    assert _max_loop(np.full(3, -np.inf, np.float32), 3) == -np.inf
