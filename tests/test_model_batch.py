"""forward_batch: several sequences in one pass give each sequence exactly the logits it gets alone.

Exact equality is the claim (not a tolerance): a row takes the same kernels with the same rounding whatever the
other rows of the batch are (kernels/batch.py), and attends only to its own sequence's cells."""

import numpy as np
import pytest

from llamacpy.errors import ContextError
from llamacpy.kernels.linear import DECODE_MAX
from llamacpy.model import LlamaModel
from shared import models_dir

NAMES = ["stories260K.gguf", "stories260K-Q4_0.gguf", "tiny-llama-Q4_K_M.gguf", "tiny-llama-Q6_K.gguf"]


@pytest.fixture(scope="module", params=NAMES)
def model(request):
    return LlamaModel.load(models_dir() / request.param, n_ctx=128, n_seq=5)


def _prompts(seed=0, lengths=(5, 20, 3, 11, 1)):
    rng = np.random.default_rng(seed)
    return [[1] + rng.integers(3, 250, size=n - 1).tolist() for n in lengths]


def _batch(prompts, starts):
    toks = sum(prompts, [])
    pos = sum([list(range(s, s + len(p))) for s, p in zip(starts, prompts)], [])
    seqs = sum([[i] * len(p) for i, p in enumerate(prompts)], [])
    return toks, pos, seqs


def test_batch_of_sequences_equals_each_alone(model):
    prompts = _prompts()
    steps = [[7, 9, 11, 13, 15], [300 % model.n_vocab, 2, 3, 4, 5]]
    alone = []
    for s, p in enumerate(prompts):
        model.kv.clear()
        rows = [model.forward(p, seq_id=s)[0]]
        for step in steps:
            rows.append(model.forward([step[s]], seq_id=s)[0])
        alone.append(rows)
    model.kv.clear()
    got = [model.forward_batch(*_batch(prompts, [0] * 5))]
    for step in steps:  # one decode token of every sequence in one call
        got.append(model.forward_batch(step, [model.kv.n_used[s] for s in range(5)], range(5)))
    for s in range(5):
        for i in range(len(steps) + 1):
            np.testing.assert_array_equal(got[i][s], alone[s][i])


def test_decode_rows_mixed_with_a_prompt_chunk(model):
    """Decode tokens of three sequences and a 20-token prompt of a fourth in one call."""
    prompts = _prompts(1, (6, 9, 4, 20))
    model.kv.clear()
    for s in range(3):
        model.forward(prompts[s], seq_id=s)
    ref_dec = model.forward_batch([5, 6, 7], [6, 9, 4], [0, 1, 2])
    ref_prompt = model.forward(prompts[3], seq_id=3)
    model.kv.clear()
    for s in range(3):
        model.forward(prompts[s], seq_id=s)
    toks = [5, 6, 7] + prompts[3]
    got = model.forward_batch(toks, [6, 9, 4] + list(range(20)), [0, 1, 2] + [3] * 20)
    np.testing.assert_array_equal(got[:3], ref_dec)
    np.testing.assert_array_equal(got[3], ref_prompt[0])


def test_more_decode_rows_than_one_decode_call():
    m = LlamaModel.load(models_dir() / "stories260K-Q8_0.gguf", n_ctx=32, n_seq=DECODE_MAX + 3)
    n = DECODE_MAX + 3
    alone = []
    for s in range(n):
        m.kv.clear()
        m.forward([1, 10 + s], seq_id=s)
        alone.append(m.forward([20 + s], seq_id=s)[0])
    m.kv.clear()
    m.forward_batch(sum([[1, 10 + s] for s in range(n)], []), [0, 1] * n,
                    sum([[s, s] for s in range(n)], []))
    got = m.forward_batch([20 + s for s in range(n)], [2] * n, range(n))
    for s in range(n):
        np.testing.assert_array_equal(got[s], alone[s])


def test_batch_errors(model):
    model.kv.clear()
    with pytest.raises(ValueError, match="contiguous"):
        model.forward_batch([1, 2, 3], [0, 0, 1], [0, 1, 0])
    with pytest.raises(ContextError, match="continue sequence 1"):
        model.forward_batch([1, 2], [0, 5], [0, 1])
    with pytest.raises(ValueError, match="sequence id 9"):
        model.forward_batch([1], [0], [9])


def test_kv_cache_is_f16_grown_as_used_and_kept_apart():
    """The cache holds f16 bits, takes blocks as sequences grow (not n_seq x n_ctx up front), gives them back on
    clear/truncate, and one sequence's cells are bit for bit what that sequence computes alone."""
    m = LlamaModel.load(models_dir() / "stories260K-Q4_0.gguf", n_ctx=512, n_seq=4)
    kv = m.kv
    assert kv.k_pool[0].dtype == np.uint16 and kv.nbytes == 0
    prompts = _prompts(3, (40, 7, 70, 2))
    for s, p in enumerate(prompts):
        m.forward(p, seq_id=s)
    alone = [kv.gather(1, s, len(p)) for s, p in enumerate(prompts)]
    cells = sum(-(-len(p) // 32) * 32 for p in prompts)
    assert kv.nbytes >= cells * 2 * m.cfg.n_layer * m.cfg.n_head_kv * (m.cfg.head_dim_k + m.cfg.head_dim_v) // 2
    assert kv.capacity_blocks < kv.n_seq * kv.max_blocks
    kv.clear()
    assert sorted(kv.free) == list(range(kv.capacity_blocks))
    m.forward_batch(*_batch(prompts, [0] * 4), logits="none")
    for s, p in enumerate(prompts):
        k, v = kv.gather(1, s, len(p))
        np.testing.assert_array_equal(k, alone[s][0])
        np.testing.assert_array_equal(v, alone[s][1])
        np.testing.assert_array_equal(k, k.astype(np.float16).astype(np.float32))
    kv.truncate(2, 33)
    assert kv.n_blocks[2] == 2 and kv.n_used[2] == 33


@pytest.mark.parametrize("name", ["tiny-llama-Q8_0", "tiny-llama-Q4_1", "tiny-llama-Q5_0", "tiny-llama-Q5_1",
                                  "tiny-llama-Q2_K", "tiny-llama-Q3_K_S", "tiny-llama-Q5_K_M", "tiny-llama-Q6_K",
                                  "llama3-style-f16"])
def test_decode_kernels_compute_rows_independently(name):
    """What kernels/batch.py relies on, per weight type: a decode call on up to DECODE_MAX rows gives each row
    bit for bit what a one-row call gives (the types and their repacked/fused forms as the model uses them)."""
    from llamacpy.kernels.batch import rows_independent

    m = LlamaModel.load(models_dir() / f"{name}.gguf", n_ctx=16)
    L = m.layers[-1]
    rng = np.random.default_rng(0)
    for lin in (L.wqkv, L.wo, L.w_gate_up, L.w_down, m.output):
        assert rows_independent(lin)
        x = rng.standard_normal((DECODE_MAX, lin.n_in)).astype(np.float32)
        y = lin(x)
        for i in range(DECODE_MAX):
            np.testing.assert_array_equal(y[i], lin(x[i:i + 1])[0], err_msg=f"{name} {lin.name} row {i}")


def test_paged_attention_does_not_depend_on_the_job_split():
    """attention_paged splits a KV head's query heads over jobs by the thread count and batch size; every split
    gives the same bits (each head's arithmetic is the same code)."""
    from llamacpy.kernels import ops

    m = LlamaModel.load(models_dir() / "tiny-llama-Q8_0.gguf", n_ctx=128, n_seq=3)
    cfg = m.cfg
    for s, n in enumerate((70, 5, 33)):
        m.forward(list(range(3, 3 + n)), seq_id=s)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((3, cfg.n_head * cfg.head_dim_k)).astype(np.float32)
    seqs, cells = np.arange(3), np.array([69, 4, 32])
    group = cfg.n_head // cfg.n_head_kv
    outs = []
    for n_chunks in [c for c in range(1, group + 1) if group % c == 0]:
        out = np.empty((3, cfg.n_head * cfg.head_dim_v), np.float32)
        ops._attention_paged(q, m.kv.k_pool[0], m.kv.v_pool[0], m.kv.table, seqs, cells, cfg.n_head,
                             np.float32(0.25), out, n_chunks)
        outs.append(out)
    assert len(outs) >= 2
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
