"""The decode path's dispatch shortcuts (kernels/linear.py) compute what the plain calls compute, bit for bit:

- `activations(typ, level, x)` of legacy_simd / kquants_simd (quantize + layout in one compiled call) equals
  `prep(typ, level, *quantize(x))` array for array, for every SIMD type and every level this CPU runs;
- a Linear's decode through the cached kernel entry point equals the dispatcher's call of the same kernel with
  the activations of q8.py + prep (the reference path), for every SIMD type, also with a non-contiguous output
  (for Q4_0 / Q8_0 / Q4_K / Q6_K the small-tile GEMM quantizing in its own call, gemmx.py: the same bits);
- q8.py's block maxima (partial scans) keep the single scan's choice: Q8_K's first extreme wins a tie of
  magnitudes; its f16 scales round as ggml's FP32_TO_FP16 (nearest even, inf past 65504);
- a FusedLinear of mixed types (run part by part, sharing the quantized input) equals its parts called alone.
Exact equality is the claim: the same compiled code runs either way.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from llamacpy.kernels import isa, kquants_simd, legacy_simd, linear, q8, simd
from llamacpy.kernels.common import KQUANTS
from test_kernels import random_blocks

LEVELS = [lv for lv in ("avx512vnni", "avxvnni", "avx2", "neon") if lv in isa.available()]
LEGACY = [T.Q4_0, T.Q8_0, T.Q4_1, T.Q5_0, T.Q5_1]
KQ = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]


def _x(n, n_in, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    x[0, :7] = 0.0  # a zero run: amax = 0 blocks stay possible in a Q8_0 block
    return x


@pytest.mark.skipif(not LEVELS, reason="no SIMD level on this CPU (the generic kernels have no prep)")
@pytest.mark.parametrize("typ", LEGACY + KQ, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 3, 8])
def test_activations_equal_prep_of_quantize(typ, n):
    t = int(typ)
    n_in = 512 if t in KQUANTS else 96
    x = _x(n, n_in)
    x[-1, :] = 0.0  # an all-zero row (Q8_K's d = 0 branch)
    for level in LEVELS:
        if t in KQUANTS:
            ref = kquants_simd.prep(t, level, *q8.quantize_q8_k(x))
            got = kquants_simd.activations(t, level, x)
        else:
            ref = legacy_simd.prep(t, level, *q8.quantize_q8_0(x))
            got = legacy_simd.activations(t, level, x)
        assert len(got) == len(ref)
        for g, r in zip(got, ref):
            assert g.dtype == r.dtype and g.shape == r.shape
            np.testing.assert_array_equal(g, r)


def _linear(typ, n_out, n_in, seed):
    raw = random_blocks(int(typ), n_out, n_in, np.random.default_rng(seed))
    lin = linear.make_linear(int(typ), raw, (n_out, n_in), f"w{seed}")
    lin.repack()
    return lin


def _reference(lin, x):
    """The kernel called through numba's dispatcher on q8.py's quantization + prep."""
    t, level = lin.ggml_type, isa.level()
    mod = kquants_simd if t in KQUANTS else legacy_simd
    qa = q8.quantize_q8_k(x) if t in KQUANTS else q8.quantize_q8_0(x)
    y = np.empty((x.shape[0], lin.n_out), np.float32)
    mod.MV[t](simd.token(level), *lin.packed, *mod.prep(t, level, *qa[:3]), y)
    return y


@pytest.mark.skipif(not linear.uses_simd(int(T.Q4_0)), reason="SIMD decode kernels off (LLAMACPY_ISA=generic)")
@pytest.mark.parametrize("typ", LEGACY + KQ, ids=lambda t: t.name)
def test_decode_through_entry_point_equals_dispatcher(typ):
    n_in = 512 if int(typ) in KQUANTS else 96
    lin = _linear(typ, 37, n_in, 1)
    for n in (1, 2, 5):
        x = _x(n, n_in, seed=n)
        ref = _reference(lin, x)
        np.testing.assert_array_equal(lin(x), ref)  # first call: dispatcher, entry point looked up
        np.testing.assert_array_equal(lin(x), ref)  # later calls: the entry point
        if typ in (T.Q4_0, T.Q4_K):  # (two types: each compiles its kernel once more, for a strided output)
            wide = np.full((n, 2 * lin.n_out), np.nan, np.float32)
            lin(x, out=wide[:, ::2])  # a strided output: must take the dispatcher
            np.testing.assert_array_equal(wide[:, ::2], ref)
    mod = kquants_simd if int(typ) in KQUANTS else legacy_simd
    from llamacpy.kernels import gemm_simd, gemmx, isa

    # by their entry points: the small-tile GEMM where gemm_simd.SMALL has a tile for the call (quantizing in its
    # own call where gemmx has the type), else the fused matvec kernel
    for n in (1, 2, 5):
        tl = gemm_simd.small_tile(int(typ), isa.level(), n)
        gemm = gemmx.GEMMX.get(int(typ), gemm_simd.GEMM.get(int(typ)))
        key = (gemm, (tl,)) if tl is not None else (mod.MVX[int(typ)], ())
        assert key in lin._entries, (n, tl)


@pytest.mark.skipif(not linear.uses_simd(int(T.Q4_K)), reason="SIMD decode kernels off (LLAMACPY_ISA=generic)")
def test_mixed_fused_parts_share_input_exactly():
    parts = [_linear(T.Q4_K, 64, 512, 2), _linear(T.Q4_K, 32, 512, 3), _linear(T.Q6_K, 32, 512, 4)]
    xs = [_x(n, 512, seed=9 + n) for n in (1, 2, 8)]
    alone = [np.concatenate([_reference(p, x) for p in parts], axis=1) for x in xs]  # before the fusion takes
    fused = linear.fuse_linears(parts)                                              # the parts' repacks
    assert not fused._fusable  # mixed types: the Q4_K run (q + k) fused, then the Q6_K part
    assert [(a, b, type(p).__name__) for a, b, p in fused._runs] == [(0, 96, "FusedLinear"), (96, 128, "LinearQuant")]
    for x, ref in zip(xs, alone):
        np.testing.assert_array_equal(fused(x), ref)
    assert linear._shared.x is None and linear._shared.act is None  # nothing kept after the call
    # Q4_K, Q6_K, Q4_K: no run to fuse; the two Q4_K parts share x's quantization (one activations call)
    parts = [_linear(T.Q4_K, 64, 512, 5), _linear(T.Q6_K, 32, 512, 6), _linear(T.Q4_K, 32, 512, 7)]
    alone = [np.concatenate([_reference(p, x) for p in parts], axis=1) for x in xs]
    fused = linear.fuse_linears(parts)
    assert fused._runs is None and fused._share
    for x, ref in zip(xs, alone):
        np.testing.assert_array_equal(fused(x), ref)
    assert linear._shared.x is None and linear._shared.act is None


@pytest.mark.parametrize("typ", [T.F16, T.BF16], ids=lambda t: t.name)
def test_adjacent_half_parts_read_as_one_matrix(typ):
    """F16/BF16 parts whose words lie back to back in one buffer (a GGUF's tensors in file order) are read by
    one kernel call over the whole view (no copy); every (row, token) equals the part's own call, for decode
    (1, 3, 8 tokens) and prompts (12). Parts that are not adjacent run one by one, the same bits."""
    rng = np.random.default_rng(5)
    n_in, rows = 192, (64, 32, 40)
    words = (rng.standard_normal((sum(rows), n_in)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    if typ == T.F16:
        words = rng.standard_normal((sum(rows), n_in)).astype(np.float16).view(np.uint16)
    cuts = np.cumsum((0,) + rows)

    def parts_of(buf):
        return [linear.make_linear(int(typ), buf[a:b], (b - a, n_in), f"p{a}") for a, b in zip(cuts[:-1], cuts[1:])]

    adjacent = parts_of(words)
    fa = linear.fuse_linears(adjacent)
    assert fa._whole is not None and fa._whole.n_out == sum(rows)
    split = parts_of(words)
    split[1] = linear.make_linear(int(typ), words[64:96].copy(), (32, n_in), "k")  # elsewhere in memory
    fs = linear.fuse_linears(split)
    assert fs._whole is None  # not back to back: one call per part
    for n in (1, 3, 8, 12):
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        ref = np.concatenate([p(x) for p in adjacent], axis=1)
        np.testing.assert_array_equal(fa(x), ref)
        np.testing.assert_array_equal(fs(x), ref)


def test_q8_k_first_extreme_of_equal_magnitude_wins():
    x = np.zeros((4, 256), np.float32)
    x[0, 7], x[0, 2] = 5.0, -5.0  # different partial scans (7 % 4 != 2 % 4): the earlier one, -5, is max
    x[1, 2], x[1, 7] = 5.0, -5.0
    x[2, 9], x[2, 5] = -3.0, 3.0  # same partial scan (9 % 4 == 5 % 4)
    x[3, 255], x[3, 0] = -1.0, 1.0
    _, d, _ = q8.quantize_q8_k(x)
    for t, first in enumerate([-5.0, 5.0, 3.0, 1.0]):
        assert d[t, 0] == np.float32(1.0) / (np.float32(-127.0) / np.float32(first))


def test_q8_0_scales_round_to_f16_as_ggml():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 256)) * 100).astype(np.float32)
    x[1, :32] = 30000.0  # Q8_1's s = d * sum(q) = 30000 / 127 * 127 * 32 overflows f16: inf, as ggml's
    qx, dx, sx = q8.quantize_q8_0(x)
    amax = np.abs(x.reshape(2, 8, 32)).max(-1)
    d = amax / np.float32(127.0)
    np.testing.assert_array_equal(dx, d.astype(np.float16).astype(np.float32))
    s = qx.reshape(2, 8, 32).astype(np.int32).sum(-1)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(sx, (d * s.astype(np.float32)).astype(np.float16).astype(np.float32))
    assert np.isinf(sx[1, 0])


def test_f16_file_gate_up_read_in_one_call_same_logits():
    """llama.cpp's converter writes ffn_gate then ffn_up back to back (q/k/v not): the fused gate/up reads them
    as one matrix in place, and the model's logits are bit for bit those of the parts run one by one."""
    from shared import golden_dir

    from llamacpy import model as M

    m = M.LlamaModel.load(golden_dir() / "hf-tiny-llama" / "llamacpp-f16.gguf", n_ctx=32, n_threads=1)
    assert all(L.w_gate_up._whole is not None for L in m.layers)
    toks = np.array([1, 315, 29, 90])
    fast = [m.forward(toks[:2]).copy()] + [m.forward(toks[i:i + 1]).copy() for i in (2, 3)]
    m2 = M.LlamaModel.load(golden_dir() / "hf-tiny-llama" / "llamacpp-f16.gguf", n_ctx=32, n_threads=1)
    for L in m2.layers:
        L.w_gate_up._whole = None
    slow = [m2.forward(toks[:2]).copy()] + [m2.forward(toks[i:i + 1]).copy() for i in (2, 3)]
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b)
