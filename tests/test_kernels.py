"""Weight kernels vs a plain numpy reference: gguf.quants.dequantize, then a float64 matmul.

Tolerances. The kernels quantize the activations as llama.cpp does (Q8_0 per 32 for legacy types, Q8_K per 256
for k-quants; f16/bf16 rounding for F16/BF16 weights) and then compute exactly on the integers, so against the
reference computed *with the same rounded activations* the only error is f32 accumulation order: we allow 1e-4
of the output's max magnitude (Q4_1/Q5_1: llama.cpp's min term uses Q8_1's s = f16(d * sum q), which adds up to
~5e-4 relative; allowed). Against the unrounded f32 activations the error is the activation quantization itself:
Q8 has a relative step of 1/127 per block, i.e. ~0.4% rms per element, which after summing many terms stays
below ~3% of the output's max magnitude -- checked loosely at 5e-2.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from llamacpy.errors import ModelError
from llamacpy.kernels import get_num_threads, make_linear, set_num_threads
from llamacpy.kernels import linear as L
from llamacpy.kernels import q8
from llamacpy.kernels.common import BLOCK, F16_TABLE, bf16_round, f16_round
from llamacpy.kernels.dequant import dequant_rows

QTYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
SCALE_OFFSETS = {2: [0], 3: [0, 2], 6: [0], 7: [0, 2], 8: [0], 10: [80, 82], 11: [108], 12: [0, 2], 13: [0, 2],
                 14: [208]}


def random_blocks(typ: int, n_out: int, n_in: int, rng) -> np.ndarray:
    """Random bytes for every field, with sane f16 scales (no inf/nan): (n_out, bytes_per_row) uint8."""
    bs, nbytes = BLOCK[typ]
    nb = n_in // bs
    raw = rng.integers(0, 256, (n_out, nb, nbytes), dtype=np.uint8)
    for o in SCALE_OFFSETS[typ]:
        d = (rng.standard_normal((n_out, nb)) * 0.05).astype(np.float16)
        raw[:, :, o:o + 2] = d.view(np.uint8).reshape(n_out, nb, 2)
    return raw.reshape(n_out, nb * nbytes)


def rounded(typ: int, x: np.ndarray) -> np.ndarray:
    """The activations as llama.cpp's matmul for this weight type sees them."""
    if typ in (T.F32,):
        return x
    if typ == T.F16:
        return f16_round(x)
    if typ == T.BF16:
        return bf16_round(x)
    return q8.fake_quant_q8_k(x) if typ >= 10 else q8.fake_quant_q8_0(x)


def weights(typ, n_out, n_in, rng):
    """(raw tensor data as GGUFFile.tensor returns it, its f32 values (n_out, n_in))."""
    if typ == T.F32:
        w = rng.standard_normal((n_out, n_in)).astype(np.float32)
        return w, w
    if typ == T.F16:
        w = rng.standard_normal((n_out, n_in)).astype(np.float16)
        return w, w.astype(np.float32)
    if typ == T.BF16:
        w = (rng.standard_normal((n_out, n_in)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return w, (w.astype(np.uint32) << 16).view(np.float32)
    raw = random_blocks(int(typ), n_out, n_in, rng)
    return raw, dequantize(raw, typ).reshape(n_out, n_in).astype(np.float32)


ALL = [T.F32, T.F16, T.BF16] + QTYPES


@pytest.mark.parametrize("typ", QTYPES, ids=lambda t: t.name)
def test_dequant_rows_match_gguf(typ):
    rng = np.random.default_rng(int(typ))
    n_in = 512
    raw, ref = weights(typ, 9, n_in, rng)
    ids = np.array([8, 0, 3, 3], np.int64)
    out = np.empty((4, n_in), np.float32)
    dequant_rows(int(typ), raw, ids, out, F16_TABLE)
    np.testing.assert_array_equal(out, ref[ids])


@pytest.mark.parametrize("typ", ALL, ids=lambda t: t.name)
@pytest.mark.parametrize("n_out", [1, 70, 130])
def test_linear_matches_reference(typ, n_out):
    rng = np.random.default_rng(1000 * int(typ) + n_out)
    n_in = 512 if typ >= 10 and typ != T.BF16 else 96  # k-quants need whole 256-blocks; 96 = 3 legacy blocks
    raw, w = weights(typ, n_out, n_in, rng)
    lin = make_linear(int(typ), raw, (n_out, n_in), "blk.0.test.weight")
    assert (lin.n_out, lin.n_in, lin.ggml_type, lin.nbytes) == (n_out, n_in, int(typ), raw.nbytes)
    for n in (1, 2, 7, 9, 70):  # decode path up to linear.DECODE_MAX, prompt (tiles + sgemm) beyond
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        y = lin(x)
        assert y.shape == (n, n_out) and y.dtype == np.float32
        ref = rounded(typ, x).astype(np.float64) @ w.T.astype(np.float64)
        scale = np.abs(ref).max()
        tol = 6e-4 if typ in (T.Q4_1, T.Q5_1) else 1e-4
        assert np.abs(y - ref).max() <= tol * scale, (n, np.abs(y - ref).max() / scale)
        ref32 = x.astype(np.float64) @ w.T.astype(np.float64)
        assert np.abs(y - ref32).max() <= 5e-2 * np.abs(ref32).max()
        out = np.full((n, n_out), np.nan, np.float32)
        assert lin(x, out=out) is out
        np.testing.assert_array_equal(out, y)


@pytest.mark.parametrize("typ", ALL, ids=lambda t: t.name)
def test_get_rows(typ):
    rng = np.random.default_rng(7 + int(typ))
    n_in = 256 if typ >= 10 and typ != T.BF16 else 64
    raw, w = weights(typ, 33, n_in, rng)
    lin = make_linear(int(typ), raw, (33, n_in), "token_embd.weight")
    ids = np.array([32, 0, 5, 5], np.int32)
    rows = lin.get_rows(ids)
    assert rows.shape == (4, n_in) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows, w[ids])
    with pytest.raises(IndexError):
        lin.get_rows([33])


@pytest.mark.parametrize("typ", [9, 16, 20, 23, 24, 28], ids=lambda t: f"type{t}")
def test_unsupported_type_names_tensor(typ):
    with pytest.raises(ModelError, match="blk.3.ffn_up.weight"):
        make_linear(typ, np.zeros((4, 64), np.uint8), (4, 64), "blk.3.ffn_up.weight")


def test_row_length_not_multiple_of_block():
    with pytest.raises(ModelError, match="multiple"):
        make_linear(int(T.Q4_0), np.zeros((4, 18 * 5), np.uint8), (4, 172), "blk.0.ffn_down.weight")


def test_q8_0_matches_llamacpp_rounding():
    """amax/127 scale stored as f16, values rint(x * 127/amax) (ggml's AVX2 quantize_row_q8_0)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 128)).astype(np.float32)
    x[1, :32] = 0.0  # an all-zero block
    x[2, 32] = 127.0 / 2  # ties: with amax 127 every x*iscale below is an exact .5 -> ties to even
    x[2, 33:64] = np.arange(31, dtype=np.float32) + 0.5
    qx, dx, sx = q8.quantize_q8_0(x)
    b = x.reshape(3, 4, 32)
    amax = np.abs(b).max(-1)
    iscale = np.where(amax > 0, np.float32(127.0) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.rint(b * iscale[..., None]).astype(np.int8)
    np.testing.assert_array_equal(qx.reshape(3, 4, 32), q)
    np.testing.assert_array_equal(dx, (amax / np.float32(127)).astype(np.float16).astype(np.float32))
    assert np.all(qx[1, :32] == 0) and dx[1, 0] == 0
    d32 = (amax / np.float32(127)).astype(np.float32)
    np.testing.assert_array_equal(sx, (d32 * q.astype(np.int32).sum(-1)).astype(np.float16).astype(np.float32))


def test_q8_k_matches_reference():
    """iscale = -127/max (max: the signed value of largest magnitude), q = min(127, nearest_int(iscale*x))."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 512)).astype(np.float32)
    x[0, 5] = -9.0  # the extreme maps to -127 whatever its sign (iscale = -127/max)
    x[1, 256:] = 0.0
    qx, d, bsums = q8.quantize_q8_k(x)
    for t in range(2):
        for b in range(2):
            blk = x[t, b * 256:(b + 1) * 256]
            if not np.any(blk):
                assert d[t, b] == 0 and not np.any(qx[t, b * 256:(b + 1) * 256])
                continue
            mx = blk[np.argmax(np.abs(blk))]
            iscale = np.float32(-127.0) / mx
            q = np.minimum(127, np.rint(iscale * blk)).astype(np.int8)
            np.testing.assert_array_equal(qx[t, b * 256:(b + 1) * 256], q)
            assert d[t, b] == np.float32(1.0) / iscale
    np.testing.assert_array_equal(bsums, qx.reshape(2, 32, 16).astype(np.int32).sum(-1))
    assert qx[0, 5] == -127


@pytest.mark.parametrize("typ", [T.Q4_0, T.Q4_K, T.F16], ids=lambda t: t.name)
def test_threads_give_identical_results(typ):
    rng = np.random.default_rng(5)
    raw, _ = weights(typ, 200, 512, rng)
    lin = make_linear(int(typ), raw, (200, 512), "w")
    x = rng.standard_normal((3, 512)).astype(np.float32)
    n0 = get_num_threads()
    try:
        set_num_threads(1)
        assert get_num_threads() == 1
        y1 = lin(x)
        set_num_threads(2)
        y2 = lin(x)
    finally:
        set_num_threads(n0)
    np.testing.assert_array_equal(y1, y2)


def test_repack_drops_mmap_pages_and_stays_correct(tmp_path):
    """A repacked tensor viewed from a file mapping is advised away (MADV_DONTNEED) and still computes right,
    also on the prompt path, which reads the raw blocks again."""
    rng = np.random.default_rng(6)
    raw, w = weights(T.Q4_0, 256, 1024, rng)
    p = tmp_path / "w.bin"
    p.write_bytes(raw.tobytes())
    with open(p, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mm, np.uint8).reshape(raw.shape)
    assert L._is_file_mapping(view) and not L._is_file_mapping(raw)
    lin = make_linear(int(T.Q4_0), view, (256, 1024), "w")
    for n in (1, 20, 1):
        x = rng.standard_normal((n, 1024)).astype(np.float32)
        ref = rounded(T.Q4_0, x).astype(np.float64) @ w.T.astype(np.float64)
        assert np.abs(lin(x) - ref).max() <= 1e-4 * np.abs(ref).max()
    assert lin.packed is not None and lin.resident_bytes > 0
    del view, lin
    os.sync()


@pytest.mark.parametrize("typ", [T.Q4_1, T.Q5_1], ids=lambda t: t.name)
def test_q4_1_q5_1_min_term_uses_q8_1_s(typ):
    """llama.cpp: sum_b d*dx*sum(q*qx) + m*s with s = f16(d_x * sum qx) (Q8_1). Both paths must do the same
    (the f16 rounding of s is what the golden logits need), to f32 accumulation error."""
    rng = np.random.default_rng(11)
    n_out, n_in = 67, 256
    raw, _ = weights(typ, n_out, n_in, rng)
    blk = raw.reshape(n_out, n_in // 32, -1)
    d = blk[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float64)
    m = blk[:, :, 2:4].copy().view(np.float16)[:, :, 0].astype(np.float64)
    deq = dequantize(raw, typ).reshape(n_out, n_in // 32, 32).astype(np.float64)
    q = (deq - m[:, :, None]) / np.where(d == 0, 1, d)[:, :, None]  # the integer quants
    lin = make_linear(int(typ), raw, (n_out, n_in), "w")
    for n in (1, 3, 20):  # decode and prompt paths
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        qx, dx, sx = q8.quantize_q8_0(x)
        qxb = qx.reshape(n, -1, 32).astype(np.float64)
        ref = (np.einsum("rbj,tbj->trb", q, qxb) * d[None] * dx[:, None, :]).sum(-1) + sx.astype(np.float64) @ m.T
        y = lin(x)
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


def test_half_conversion_edge_values():
    """F16 subnormals, zeros, max and BF16 values convert exactly (LLVM half->float / bit shift)."""
    vals = np.array([0.0, -0.0, 6e-8, -6e-8, 6.1e-5, 65504.0, -65504.0, 1.0, -2.5, 1e-3], np.float16)
    w = np.tile(vals, (3, 1))  # (3, 10)
    lin = make_linear(int(T.F16), w, w.shape, "w")
    np.testing.assert_array_equal(lin.get_rows([0, 2]), np.tile(vals.astype(np.float32), (2, 1)))
    x = np.zeros((1, 10), np.float32)
    x[0, 4] = 1.0
    assert lin(x)[0, 1] == np.float32(vals[4])
    wb = (np.array([1.5, -3.0e38, 1e-40, 0.0], np.float32).view(np.uint32) >> 16).astype(np.uint16)[None]
    lb = make_linear(int(T.BF16), wb, wb.shape, "w")
    x = np.eye(4, dtype=np.float32)[:1]
    assert lb(x)[0, 0] == 1.5


@pytest.mark.parametrize("types", [(T.Q4_0, T.Q4_0, T.Q4_0), (T.Q4_K, T.Q4_K), (T.Q4_K, T.Q6_K), (T.F16, T.F16)],
                         ids=lambda ts: "+".join(t.name for t in ts))
def test_fused_linears_match_parts(types):
    from llamacpy.kernels import fuse_linears

    rng = np.random.default_rng(13)
    n_in = 512
    shapes = [256, 128, 70][:len(types)]  # the last part may pad its row group
    parts, refs = [], []
    for typ, n_out in zip(types, shapes):
        raw, w = weights(typ, n_out, n_in, rng)
        parts.append(make_linear(int(typ), raw, (n_out, n_in), f"p{n_out}"))
        refs.append(w)
    f = fuse_linears(parts)
    assert (f.n_in, f.n_out) == (n_in, sum(shapes))
    for n in (1, 3, 12):
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        expect = np.concatenate([p(x) for p in parts], axis=1)
        y = f(x)
        assert y.shape == (n, sum(shapes))
        np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5 * np.abs(expect).max())
        for part, ref in zip(f.split(y), np.split(expect, f.offsets[1:-1], axis=1)):
            np.testing.assert_allclose(part, ref, rtol=1e-5, atol=1e-5 * np.abs(expect).max())


@pytest.mark.parametrize("typ", QTYPES, ids=lambda t: t.name)
def test_generic_kernel_without_repack(typ):
    """repack=False keeps the file layout: the dequantize-and-dot kernel on Q8-rounded activations."""
    rng = np.random.default_rng(14 + int(typ))
    n_in = 512
    raw, w = weights(typ, 37, n_in, rng)
    lin = make_linear(int(typ), raw, (37, n_in), "w", repack=False)
    x = rng.standard_normal((2, n_in)).astype(np.float32)
    ref = rounded(typ, x).astype(np.float64) @ w.T.astype(np.float64)
    assert lin.packed is None
    assert np.abs(lin(x) - ref).max() <= 1e-4 * np.abs(ref).max()
    assert lin.packed is None


def test_attention_blas_matches_loops():
    """The prompt-batch attention (sgemm per KV head) equals the per-token numba loops, incl. the f16 rounding
    of q and of the probabilities, a cache already holding earlier tokens, and query chunking."""
    from llamacpy.kernels import ops

    rng = np.random.default_rng(15)
    n_head, n_head_kv, dk, n_ctx = 8, 2, 16, 80
    k_cache = f16_round(rng.standard_normal((n_head_kv, n_ctx, dk)).astype(np.float32))
    v_cache = f16_round(rng.standard_normal((n_head_kv, n_ctx, dk)).astype(np.float32))
    for start, n in ((0, 40), (13, 30)):
        q = rng.standard_normal((n, n_head * dk)).astype(np.float32)
        a = np.empty((n, n_head * dk), np.float32)
        b = np.empty_like(a)
        ops.attention_loops(q, k_cache, v_cache, start, n_head, 0.25, a)
        ops.attention_blas(q, k_cache, v_cache, start, n_head, 0.25, b, q_chunk=16)
        np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-4)  # f16 rounding of p may flip on last-bit ties
        assert np.abs(b - a).mean() < 1e-5


def test_q6_k_big_row_groups():
    """Q6_K matrices with many rows take 512/1024-row groups (also fused, and with a padded last group):
    same results as the reference and as the parts."""
    from llamacpy.kernels import fuse_linears

    nt = max(8, 2 * L.nb.config.NUMBA_NUM_THREADS)
    assert L.group_rows(int(T.Q6_K), [256]) == 256
    assert L.group_rows(int(T.Q6_K), [1024 * nt - 100]) == 1024  # pads 100 rows (< 1/32)
    assert L.group_rows(int(T.Q6_K), [512 * nt + 512, 512 * nt]) == 512  # 1024 would split the first part
    rng = np.random.default_rng(15)
    n_in = 256
    sizes = [512 * nt + 512, 512 * nt - 70]
    parts, refs = [], []
    for n_out in sizes:
        raw, w = weights(T.Q6_K, n_out, n_in, rng)
        parts.append(make_linear(int(T.Q6_K), raw, (n_out, n_in), f"p{n_out}"))
        refs.append(w)
    x = rng.standard_normal((3, n_in)).astype(np.float32)
    ref = rounded(T.Q6_K, x).astype(np.float64) @ np.concatenate(refs).T.astype(np.float64)
    alone = np.concatenate([p(x) for p in parts], axis=1)
    generic = not L.uses_simd(int(T.Q6_K))  # the SIMD kernels keep whole rows (no row groups)
    assert parts[0].packed[0].shape[-1] == 512 or not generic
    assert np.abs(alone - ref).max() <= 1e-4 * np.abs(ref).max()
    f = fuse_linears(parts)
    y = f(x)
    assert f._packed[0].shape[-1] == 512 or not generic
    np.testing.assert_allclose(y, alone, rtol=1e-5, atol=1e-5 * np.abs(alone).max())
    raw, w = weights(T.Q6_K, 1024 * nt - 100, n_in, rng)
    lin = make_linear(int(T.Q6_K), raw, w.shape, "output.weight")
    y = lin(x[:1])
    assert lin.packed[0].shape[-1] == 1024 or not generic
    ref = rounded(T.Q6_K, x[:1]).astype(np.float64) @ w.T.astype(np.float64)
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()


def test_release_thread_pool_frees_this_threads_openmp_workers():
    """linear.release_thread_pool frees the calling thread's OpenMP pool (the engine calls it before its thread
    becomes the only OpenMP master; see its docstring for the measured cost of a second pool)."""
    import os
    import threading
    import time

    import numba as nb

    from llamacpy.kernels import linear

    def parallel_call():
        a = np.ones((64, 256), np.float32)
        linear.LinearF32(0, a, (64, 256), "w")(np.ones((2, 256), np.float32))  # dense.mv_f32: a parallel call

    parallel_call()  # initialises numba's threading layer
    if not os.path.isdir("/proc/self/task") or nb.threading_layer() != "omp" or nb.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs Linux, numba's OpenMP layer and >= 2 threads")

    def pool_threads_after_kernel(release: bool) -> int:
        seen = []

        def body():
            linear.set_num_threads(2)
            parallel_call()
            before = len(os.listdir("/proc/self/task"))
            freed = linear.release_thread_pool() if release else False
            for _ in range(100):  # the freed workers exit on their own: allow them up to a second
                if len(os.listdir("/proc/self/task")) < before:
                    break
                time.sleep(0.01)
            seen.append((before, len(os.listdir("/proc/self/task")), freed))

        t = threading.Thread(target=body)
        t.start()
        t.join()
        return seen[0]

    before, after, freed = pool_threads_after_kernel(release=True)
    assert freed and after < before, (before, after, freed)
    before, after, freed = pool_threads_after_kernel(release=False)
    assert not freed and after == before
