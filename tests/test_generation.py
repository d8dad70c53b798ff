"""Session: prefix reuse, context shift (KV shift vs re-evaluation), stop strings, timings."""

import numpy as np
import pytest

from llamacpy.errors import ContextError
from llamacpy.generation import Session, StopMatcher
from llamacpy.model import LlamaModel
from llamacpy.sampling import Sampler, SamplingParams
from shared import models_dir
from tiny_models import write_tiny_llama


@pytest.fixture(scope="module")
def model():
    return LlamaModel.load(models_dir() / "stories260K.gguf", n_ctx=64)


def test_prefix_reuse_gives_same_logits(model):
    """7 tokens in one batch vs 4 + 3: both batches are at most linear.DECODE_MAX tokens, so every matmul runs
    the decode kernels, which compute each token's outputs on their own in a fixed order (F32 too: dense.mv_f32,
    not sgemm, whose summation order follows its blocking and the CPU's BLAS kernel); attention below
    ops.ATTN_BLAS_MIN_TOKENS runs per query token. So the two paths must agree bit for bit on any CPU."""
    s = Session(model)
    s.reset()
    toks = [1, 403, 407, 261, 378, 432, 383]
    full = s.eval(toks, all_logits=True)
    s.truncate(4)
    again = s.eval(toks[4:], all_logits=True)
    np.testing.assert_array_equal(again, full[4:])


def test_context_shift_matches_reevaluation(tmp_path):
    """After a shift the cache holds the kept tokens + the later half, keys re-rotated by -n_discard. In a
    1-layer model the cached K/V depend only on (token, position), so re-evaluating that token window from scratch
    must give the same cache and logits, up to RoPE-shift rounding: re-rotated keys are rounded to f16 twice
    (stored, then rotated and stored again), ~1e-3 relative, which moves logits by well under 1e-2."""
    model = LlamaModel.load(write_tiny_llama(tmp_path / "one-layer.gguf", n_layer=1, n_embd=64, n_head=4,
                                             n_head_kv=2), n_ctx=64)
    rng = np.random.default_rng(0)
    toks = [1] + rng.integers(3, 300, size=63).tolist()
    s = Session(model)
    s.reset()
    s.eval(toks)
    n_discard = s.shift(n_keep=8)
    assert n_discard == 28 and len(s.tokens) == 36
    assert s.tokens[:8] == toks[:8]  # the kept prefix stays at the front of the cache
    nxt = [100, 101, 102]
    shifted = s.eval(nxt, all_logits=True)
    k_shifted = model.kv.k[0, 0, :, :39].copy()

    ref = Session(model)
    ref.reset()
    window = toks[:8] + toks[36:] + nxt
    expect = ref.eval(window, all_logits=True)[-3:]
    k_ref = model.kv.k[0, 0, :, :39]
    np.testing.assert_allclose(k_shifted, k_ref, atol=2e-3 * np.abs(k_ref).max())
    assert np.abs(shifted - expect).max() < 0.01
    assert (shifted.argmax(1) == expect.argmax(1)).all()


def test_context_shift_keeps_prefix_cells_untouched(model):
    s = Session(model)
    s.reset()
    s.eval([1] + list(range(10, 73)))
    before = model.kv.k[:, 0, :, :8].copy()
    s.shift(n_keep=8)
    np.testing.assert_array_equal(model.kv.k[:, 0, :, :8], before)


def test_generation_runs_past_many_context_shifts(model):
    s = Session(model)
    s.reset()
    out = list(s.generate([1, 403, 407, 261, 378], Sampler(SamplingParams(seed=1)), n_predict=200, n_keep=5))
    assert len(out) == 200 and s.n_shifts >= 3
    assert s.tokens[:5] == [1, 403, 407, 261, 378] and len(s.tokens) <= 64


def test_no_context_shift_stops_at_full_window(model):
    s = Session(model)
    s.reset()
    out = list(s.generate([1, 403], Sampler(SamplingParams(seed=1)), n_predict=500, context_shift=False))
    assert len(s.tokens) == 64 and len(out) == 63


def test_prompt_longer_than_context(model):
    s = Session(model)
    with pytest.raises(ContextError, match="prompt is too long"):
        list(s.generate([1] * 65, Sampler(), n_predict=1))


def test_timings_count_prompt_and_eval(model):
    s = Session(model)
    s.reset()
    list(s.generate([1, 403, 407], Sampler(SamplingParams(temp=0)), n_predict=4))
    t = s.timings
    assert (t.n_prompt, t.n_eval, t.n_sample) == (3, 3, 4)
    report = t.report()
    for label in ("load time =", "prompt eval time =", "eval time =", "total time =", "tokens per second"):
        assert label in report


@pytest.mark.parametrize("pieces,stops,want", [
    (["Hello", " Us", "er:", " more"], ["User:"], "Hello "),
    (["a", "b", "c"], ["x"], "abc"),
    (["ab", "cd"], ["bc"], "a"),
    (["Us"], ["User:"], "Us"),  # a held-back prefix that never completes is released at the end
])
def test_stop_matcher(pieces, stops, want):
    m = StopMatcher(stops)
    out, stopped = "", False
    for p in pieces:
        text, stopped = m.feed(p)
        out += text
        if stopped:
            break
    if not stopped:
        out += m.flush()
    assert out == want
