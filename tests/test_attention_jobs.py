"""The prompt attention's per-KV-head jobs (kernels/workers.py run_jobs): the same bits on one thread or several,
and the threaded K/V gather equal to the plain f16 -> f32 conversion; the decode attention over the paged cache
(ops.attention_paged, cells in groups of 4) against a float64 reference, and a row alone equal to the row in a
batch."""

from __future__ import annotations

import numpy as np
import pytest

from llamacpy.kernels import get_num_threads, ops, set_num_threads, workers


@pytest.fixture
def two_threads():
    before = get_num_threads()
    set_num_threads(2)
    yield
    set_num_threads(before)


def test_run_jobs_runs_each_job_once_and_reraises():
    seen = []
    workers.run_jobs(seen.append, 7, 3)
    assert sorted(seen) == list(range(7))

    def boom(i):
        if i == 5:
            raise ValueError("job 5")

    with pytest.raises(ValueError, match="job 5"):
        workers.run_jobs(boom, 7, 3)


def test_attention_blas_same_bits_on_one_or_two_threads(two_threads):
    """Each (query chunk, KV head) job makes the same calls whichever thread runs it."""
    rng = np.random.default_rng(4)
    n_head, n_head_kv, dk, n_ctx = 8, 4, 32, 96
    k = rng.standard_normal((n_head_kv, n_ctx, dk)).astype(np.float16).astype(np.float32)
    v = rng.standard_normal((n_head_kv, n_ctx, dk)).astype(np.float16).astype(np.float32)
    full = rng.standard_normal((40, n_head * dk + 16)).astype(np.float32)
    q = full[:, :n_head * dk]  # a strided view, as the fused q/k/v output's q part is
    a = np.empty((40, n_head * dk), np.float32)
    ops.attention_blas(q, k, v, 20, n_head, 0.17, a, q_chunk=16)
    set_num_threads(1)
    b = np.empty_like(a)
    ops.attention_blas(q, k, v, 20, n_head, 0.17, b, q_chunk=16)
    np.testing.assert_array_equal(a, b)


def test_gather_kv_threaded_equals_conversion(two_threads, monkeypatch):
    rng = np.random.default_rng(5)
    n_blocks, n_head_kv, d = 6, 3, 8
    pool = rng.standard_normal((n_blocks, n_head_kv, ops.KV_BLOCK, d)).astype(np.float16).view(np.uint16)
    table_row = np.array([4, 1, 5, -1], np.int32)
    n = 2 * ops.KV_BLOCK + 7
    want = np.concatenate([pool[b] for b in table_row[:3]], axis=1)[:, :n].view(np.float16).astype(np.float32)
    for cells in (1 << 30, 0):  # all in the calling thread; one job per head on two threads
        monkeypatch.setattr(ops, "GATHER_MT_CELLS", cells)
        out = np.full((n_head_kv, n, d), np.nan, np.float32)
        ops.gather_kv(pool, table_row, n, out)
        np.testing.assert_array_equal(out, want)


def test_swiglu_split_over_threads_same_bits(two_threads, monkeypatch):
    rng = np.random.default_rng(6)
    g = (rng.standard_normal((9, 40)) * 5).astype(np.float32)
    u = rng.standard_normal((9, 40)).astype(np.float32)
    outs = []
    for values in (1 << 30, 0):  # in the calling thread; in row ranges on two threads
        monkeypatch.setattr(ops, "SWIGLU_MT_VALUES", values)
        out = np.full_like(g, np.nan)
        ops.swiglu(g, u, out)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.isnan(outs[0]).any()


def _paged_reference(q, kp, vp, table, seqs, cells, n_head, scale):
    """float64 attention with attention_paged's roundings: q and the probabilities rounded to f16."""
    K = kp.view(np.float16).astype(np.float64)  # (n_blocks, n_head_kv, B, d)
    V = vp.view(np.float16).astype(np.float64)
    n_head_kv, d = K.shape[1], K.shape[3]
    out = np.zeros((q.shape[0], n_head * d))
    for t in range(q.shape[0]):
        n_kv = cells[t] + 1
        blocks = table[seqs[t], :-(-n_kv // ops.KV_BLOCK)]
        kt = K[blocks].transpose(1, 0, 2, 3).reshape(n_head_kv, -1, d)[:, :n_kv]  # (n_head_kv, n_kv, d)
        vt = V[blocks].transpose(1, 0, 2, 3).reshape(n_head_kv, -1, d)[:, :n_kv]
        for h in range(n_head):
            g = h // (n_head // n_head_kv)
            qh = q[t, h * d:(h + 1) * d].astype(np.float16).astype(np.float64)
            s = kt[g] @ qh * scale
            p = np.exp(s - s.max())
            p = (p / p.sum()).astype(np.float16).astype(np.float64)
            out[t, h * d:(h + 1) * d] = p @ vt[g]
    return out


def test_paged_attention_matches_a_float64_reference_and_rows_are_batch_independent():
    rng = np.random.default_rng(3)
    n_head, n_head_kv, d, n_blocks = 8, 2, 32, 12
    kp = rng.standard_normal((n_blocks, n_head_kv, ops.KV_BLOCK, d)).astype(np.float16).view(np.uint16)
    vp = rng.standard_normal((n_blocks, n_head_kv, ops.KV_BLOCK, d)).astype(np.float16).view(np.uint16)
    table = rng.permutation(n_blocks).astype(np.int32).reshape(3, 4)  # 3 sequences of up to 4 blocks
    scale = np.float32(d ** -0.5)
    cells = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 31, 32, 33, 70, 127])  # every n_kv % 4, block edges
    seqs = np.arange(len(cells)) % 3
    q = rng.standard_normal((len(cells), n_head * d)).astype(np.float32)
    out = np.empty((len(cells), n_head * d), np.float32)
    ops.attention_paged(q, kp, vp, table, seqs, cells, n_head, scale, out)
    ref = _paged_reference(q, kp, vp, table, seqs, cells, n_head, scale)
    # a probability's f16 rounding can go the other way between the f32 and the f64 exp (one f16 ulp, 2^-11
    # relative); over a row that moves the output by at most ~2^-11 * max|v| (|v| <= ~4.5 here): 3e-3 bounds it,
    # while a wrong cell, head or missing group member moves it by ~0.1-1
    np.testing.assert_allclose(out, ref, rtol=0, atol=3e-3)
    for t in range(len(cells)):  # a row alone: the same bits as in the batch
        one = np.empty((1, n_head * d), np.float32)
        ops.attention_paged(q[t:t + 1], kp, vp, table, seqs[t:t + 1], cells[t:t + 1], n_head, scale, one)
        np.testing.assert_array_equal(one[0], out[t])
