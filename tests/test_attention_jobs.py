"""The prompt attention's per-KV-head jobs (kernels/workers.py run_jobs): the same bits on one thread or several,
and the threaded K/V gather equal to the plain f16 -> f32 conversion."""

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
