"""quants/: dequantizers vs the gguf package's numpy oracle, quantizers vs llama.cpp's bytes and vs gguf's
reference quantizers, round-trip error bounds, and the f16/bf16 scalar conversions.

Byte identity with llama.cpp is checked on llama-quantize's own output: every quantized tensor of
../shared/models/tiny-llama-*.gguf (all five k-quants and the legacy types) and of stories260K-*.gguf
(legacy types) must come out of `quants.quantize` byte for byte from the F32 source.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import pytest
from gguf import quants as gq
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from llamacpy import quants as Q
from llamacpy.gguf_file import GGUFFile
from llamacpy.quants.half import f16_bits_to_f32, f32_to_f16_bits
from shared import golden_dir, models_dir

QUANTIZED = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
LEGACY = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]
TINY_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
              "Q5_K_S", "Q5_K_M", "Q6_K"]


def _oracle_dequantize(raw: np.ndarray, ggml_type: int, shape) -> np.ndarray:
    return gq.dequantize(raw.reshape(-1, raw.shape[-1]), ggml_type).reshape(shape)


# ---------------------------------------------------------------------------------------------------------
# table


def test_table_matches_gguf_constants():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    for t in Q.SUPPORTED:
        qt = Q.QUANT_TYPES[t]
        assert (qt.block_size, qt.type_size) == GGML_QUANT_SIZES[GGMLQuantizationType(t)]
        assert qt.name == GGMLQuantizationType(t).name
        assert qt.can_quantize
        assert qt.quantized == (t not in (Q.F32, Q.F16, Q.BF16))
    assert Q.QUANT_TYPES[Q.Q4_K].row_bytes(512) == 288


def test_unsupported_type_and_bad_shapes():
    with pytest.raises(ValueError, match="unsupported"):
        Q.quantize(np.zeros((1, 256), np.float32), 16)  # IQ2_XXS
    with pytest.raises(ValueError, match="multiple"):
        Q.quantize(np.zeros((2, 48), np.float32), Q.Q4_0)
    with pytest.raises(ValueError, match="2-D"):
        Q.quantize(np.zeros((2, 2, 32), np.float32), Q.Q4_0)
    assert Q.quantize(np.zeros((0, 256), np.float32), Q.Q4_K).shape == (0, 144)


# ---------------------------------------------------------------------------------------------------------
# dequantization vs the gguf oracle, on real llama.cpp files


def _quantized_model_files():
    return sorted(models_dir().glob("tiny-llama-*.gguf")) + sorted(models_dir().glob("stories260K-*.gguf"))


def test_dequantize_matches_gguf_oracle_on_model_files():
    seen = set()
    files = _quantized_model_files()
    assert len(files) >= 19
    for path in files:
        f = GGUFFile(path)
        for name, ti in f.tensors.items():
            raw = f.tensor_bytes(name)
            ours = Q.dequantize(raw, ti.ggml_type, ti.shape)
            assert ours.dtype == np.float32 and ours.shape == ti.shape
            np.testing.assert_array_equal(ours, _oracle_dequantize(raw, ti.ggml_type, ti.shape),
                                          err_msg=f"{path.name}:{name}")
            seen.add(ti.ggml_type)
    assert set(QUANTIZED) | {Q.F32} <= seen


def test_dequantize_f16_bf16_files():
    for kind, t in (("f16", Q.F16), ("bf16", Q.BF16)):
        f = GGUFFile(golden_dir() / "hf-tiny-llama" / f"llamacpp-{kind}.gguf")
        ref = GGUFFile(golden_dir() / "hf-tiny-llama" / "llamacpp-f32.gguf")
        for name, ti in f.tensors.items():
            if ti.ggml_type != t:
                continue
            ours = Q.dequantize(f.tensor_bytes(name), t, ti.shape)
            np.testing.assert_array_equal(ours, _oracle_dequantize(f.tensor_bytes(name), t, ti.shape))
            # the checkpoint is bf16: the bf16 file is exact, the f16 file is the f32 values rounded to f16
            expect = ref.tensor(name) if t == Q.BF16 else ref.tensor(name).astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(ours, expect)


# ---------------------------------------------------------------------------------------------------------
# quantization: byte identity with llama-quantize's output


def _f32_source():
    return GGUFFile(golden_dir() / "hf-tiny-llama" / "llamacpp-f32.gguf")


DEFAULT_MIXES = ("Q8_0", "Q4_0", "Q4_K_M")  # the rest (Q2_K alone ~100 s of first-run JIT) run with -m slow


@pytest.mark.parametrize("mix", [pytest.param(m, marks=() if m in DEFAULT_MIXES else pytest.mark.slow)
                                 for m in TINY_TYPES])
def test_quantize_bytes_equal_llama_quantize(mix):
    """Every quantized tensor of tiny-llama-{mix}.gguf, including all five k-quants, is reproduced byte for
    byte from the F32 source (the k-quants exactly, not just within llama.cpp's error)."""
    src, ref = _f32_source(), GGUFFile(models_dir() / f"tiny-llama-{mix}.gguf")
    n_checked = 0
    for name, ti in ref.tensors.items():
        if ti.ggml_type == Q.F32:
            continue
        x = src.tensor(name).reshape(-1, ti.shape[-1])
        ours = Q.quantize(x, ti.ggml_type)
        theirs = ref.tensor_bytes(name).reshape(ours.shape)
        if not np.array_equal(ours, theirs):
            qt = Q.QUANT_TYPES[ti.ggml_type]
            bad = np.flatnonzero((ours.reshape(-1, qt.type_size) != theirs.reshape(-1, qt.type_size)).any(1))
            pytest.fail(f"{mix} {name} ({qt.name}): {bad.size} blocks differ, first {bad[:5]}")
        n_checked += 1
    assert n_checked >= 16


@pytest.mark.parametrize("t", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_quantize_bytes_equal_stories260k(t):
    """stories260K-{t}.gguf (llama-quantize --pure) holds llama.cpp's bytes for every tensor but ffn_down."""
    src, ref = GGUFFile(models_dir() / "stories260K.gguf"), GGUFFile(models_dir() / f"stories260K-{t}.gguf")
    n = 0
    for name, ti in ref.tensors.items():
        if ti.ggml_type == Q.F32:
            continue
        ours = Q.quantize(src.tensor(name).reshape(-1, ti.shape[-1]), ti.ggml_type)
        np.testing.assert_array_equal(ours, ref.tensor_bytes(name).reshape(ours.shape), err_msg=name)
        n += 1
    assert n == 2 + 6 * 5  # token_embd, output, and q/k/v/o/gate/up of 5 layers


# ---------------------------------------------------------------------------------------------------------
# quantization vs gguf's numpy reference quantizers (legacy, bf16, f16) on random data


def _random_rows(rng, n_rows, n_cols, kind):
    if kind == "normal":
        return rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    if kind == "wide":
        return (rng.standard_normal((n_rows, n_cols)) * 10.0 ** rng.integers(-6, 4, (n_rows, 1))).astype(np.float32)
    if kind == "sparse":
        x = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
        x[rng.random(x.shape) < 0.7] = 0
        return x
    if kind == "ties":  # many equal magnitudes and exact halves: stresses tie-breaking and rounding
        return (rng.integers(-16, 17, (n_rows, n_cols)) * np.float32(0.25)).astype(np.float32)
    raise ValueError(kind)


@pytest.mark.parametrize("t", LEGACY)
@pytest.mark.parametrize("kind", ["normal", "wide", "sparse", "ties"])
def test_legacy_quantize_matches_gguf_reference(t, kind):
    rng = np.random.default_rng(t * 7 + len(kind))
    x = _random_rows(rng, 37, 96, kind)  # odd row count, 3 blocks per row
    x[0] = 0.0  # an all-zero row
    np.testing.assert_array_equal(Q.quantize(x, t), gq.quantize(x, t))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, (3, 64), elements=st.floats(-1e4, 1e4, width=32)), st.sampled_from(LEGACY))
def test_legacy_quantize_property(x, t):
    x = x + np.float32(0.0)  # -0.0 -> +0.0: for all-(-0.0) blocks gguf-py's sign of d differs from C's (below)
    np.testing.assert_array_equal(Q.quantize(x, t), gq.quantize(x, t))


def test_all_zero_blocks_follow_c_reference():
    """quantize_row_q4_0_ref starts from max = 0.0f, so a block of zeros of either sign gets d = 0/-8 = -0.0
    (f16 0x8000); gguf-py takes the sign of the first element instead. We follow C."""
    for z in (0.0, -0.0):
        for t in (Q.Q4_0, Q.Q5_0):
            q = Q.quantize(np.full((1, 32), z, np.float32), t)
            assert q[0, :2].tolist() == [0, 0x80]


def test_bf16_matches_gguf_reference_including_specials():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(4096).astype(np.float32) * np.float32(1e3)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-42, 3.4e38, -3.4e38,
                         np.float32(1.00390625), np.float32(1.01171875)], np.float32)  # the last two are ties
    x = np.concatenate([x, specials, np.frombuffer(np.uint32(0x7F800001).tobytes(), np.float32)])
    ours = Q.quantize(x.reshape(1, -1), Q.BF16).view(np.uint16)
    np.testing.assert_array_equal(ours, gq.quantize(x.reshape(1, -1), Q.BF16).view(np.uint16))
    assert ours[0, -1] & 0x40  # a signalling NaN becomes quiet


def test_f16_and_f32_passthrough():
    x = np.random.default_rng(2).standard_normal((5, 64)).astype(np.float32) * 100
    np.testing.assert_array_equal(Q.quantize(x, Q.F16).view(np.float16), x.astype(np.float16))
    np.testing.assert_array_equal(Q.quantize(x, Q.F32).view(np.float32), x)
    np.testing.assert_array_equal(Q.dequantize(Q.quantize(x, Q.F16), Q.F16, x.shape), x.astype(np.float16))


# ---------------------------------------------------------------------------------------------------------
# round trips: error bounds for every type, odd row counts, degenerate blocks


# max |x - dequant(quant(x))| relative to the block's max |x| (k-quants: the super-block's)
# (legacy: half a step, or a whole step for the clipped end of the symmetric types: Q4_0 1/8, Q5_0 1/16)
_ROUNDTRIP_BOUND = {Q.Q8_0: 0.0045, Q.Q4_0: 0.1251, Q.Q4_1: 0.0667, Q.Q5_0: 0.0626, Q.Q5_1: 0.0323,
                    Q.Q2_K: 0.45, Q.Q3_K: 0.22, Q.Q4_K: 0.1, Q.Q5_K: 0.05, Q.Q6_K: 0.025}
# largest multiple of a block's f16 scale(s) in one dequantized weight (see test_roundtrip_property)
_F16_SCALE_FACTOR = {Q.Q8_0: 127, Q.Q4_0: 8, Q.Q4_1: 15 + 1, Q.Q5_0: 16, Q.Q5_1: 31 + 1,
                     Q.Q2_K: 15 * 3 + 15, Q.Q3_K: 32 * 4, Q.Q4_K: 63 * 15 + 63, Q.Q5_K: 63 * 31 + 63,
                     Q.Q6_K: 128 * 32}
# rms error relative to the rms of x
_RMS_BOUND = {Q.Q8_0: 0.007, Q.Q4_0: 0.12, Q.Q4_1: 0.1, Q.Q5_0: 0.06, Q.Q5_1: 0.05,
              Q.Q2_K: 0.4, Q.Q3_K: 0.2, Q.Q4_K: 0.1, Q.Q5_K: 0.05, Q.Q6_K: 0.025}


@pytest.mark.parametrize("t", QUANTIZED)
@pytest.mark.parametrize("n_rows", [1, 7])
def test_roundtrip_error_bounds(t, n_rows):
    qt = Q.QUANT_TYPES[t]
    rng = np.random.default_rng(t + n_rows)
    x = rng.standard_normal((n_rows, 512)).astype(np.float32) * np.float32(0.02)
    q = Q.quantize(x, t)
    assert q.shape == (n_rows, qt.row_bytes(512)) and q.dtype == np.uint8
    y = Q.dequantize(q, t, x.shape)
    np.testing.assert_array_equal(y, _oracle_dequantize(q, t, x.shape))
    err = np.abs(y - x).reshape(-1, qt.block_size).max(1)
    scale = np.abs(x).reshape(-1, qt.block_size).max(1)
    assert (err <= _ROUNDTRIP_BOUND[t] * scale + 1e-12).all(), (err / scale).max()
    assert np.sqrt(np.mean((y - x) ** 2)) <= _RMS_BOUND[t] * np.sqrt(np.mean(x ** 2))


@pytest.mark.parametrize("t", QUANTIZED)
def test_degenerate_blocks(t):
    qt = Q.QUANT_TYPES[t]
    bs = qt.block_size if qt.block_size > 32 else 256
    rows = np.stack([
        np.zeros(bs), np.full(bs, 0.75), np.full(bs, -3.0), np.linspace(0, 1, bs), -np.linspace(0, 1, bs),
        np.r_[np.zeros(bs - 1), 5.0], np.full(bs, 1e-30),
    ]).astype(np.float32)
    y = Q.dequantize(Q.quantize(rows, t), t, rows.shape)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[0], 0.0)
    # constant blocks come back close; a lone spike stays the largest value
    assert np.abs(y[1] - 0.75).max() <= 0.75 * _ROUNDTRIP_BOUND[t] + 1e-3
    assert np.abs(y[2] + 3.0).max() <= 3.0 * _ROUNDTRIP_BOUND[t] + 1e-3
    assert np.argmax(y[5]) == bs - 1


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(QUANTIZED), st.integers(1, 4), st.floats(1e-4, 1e3), st.integers(0, 2 ** 32 - 1))
def test_roundtrip_property(t, n_rows, scale, seed):
    qt = Q.QUANT_TYPES[t]
    x = (np.random.default_rng(seed).standard_normal((n_rows, 256)) * scale).astype(np.float32)
    y = Q.dequantize(Q.quantize(x, t), t, x.shape)
    err = np.abs(y - x).reshape(-1, qt.block_size).max(1)
    # f16 scales of tiny blocks are subnormal (steps of 2**-24, so off by up to 2**-25), and that scale error is
    # multiplied by the largest factor a weight's value takes from it: the quant level (127 for Q8_0), and for
    # k-quants the 4/6/8-bit sub-block scale times the quant level, plus the min term (Q5_K: 63 * 31 + 63)
    slack = 2.0 ** -25 * _F16_SCALE_FACTOR[t] * 1.01
    assert (err <= _ROUNDTRIP_BOUND[t] * np.abs(x).reshape(-1, qt.block_size).max(1) * 1.01 + slack).all()


# ---------------------------------------------------------------------------------------------------------
# numba f16 scalars (the block scales) vs numpy


@nb.njit(cache=True)
def _encode_all(x):
    out = np.empty(x.size, np.uint16)
    for i in range(x.size):
        out[i] = f32_to_f16_bits(x[i])
    return out


@nb.njit(cache=True)
def _decode_all(h):
    out = np.empty(h.size, np.float32)
    for i in range(h.size):
        out[i] = f16_bits_to_f32(np.int64(h[i]))
    return out


def test_f16_scalar_helpers_match_numpy():
    halves = np.arange(1 << 16, dtype=np.uint16)
    finite = np.isfinite(halves.view(np.float16))
    decoded = _decode_all(halves)
    np.testing.assert_array_equal(decoded[finite], halves.view(np.float16)[finite].astype(np.float32))
    assert np.isnan(decoded[~finite & np.isnan(halves.view(np.float16))]).all()
    rng = np.random.default_rng(3)
    # every float16 value and the midpoints between neighbours (ties), plus random floats of all magnitudes
    f = halves.view(np.float16)[finite].astype(np.float32)
    mids = ((f[:-1].astype(np.float64) + f[1:]) / 2).astype(np.float32)
    rand = (rng.standard_normal(200_000) * 10.0 ** rng.uniform(-9, 5.5, 200_000)).astype(np.float32)
    x = np.concatenate([f, mids, rand, np.float32([65504, 65519.99, 65520, 1e30, -1e30, np.inf, -np.inf])])
    with np.errstate(over="ignore"):
        expect = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(_encode_all(x), expect)
