"""The sampler chain's steps against llama.cpp's semantics (src/llama-sampling.cpp), worked by hand."""

import numpy as np
import pytest

from llamacpy.sampling import (Sampler, SamplingParams, apply_penalties, min_p, softmax, temperature, top_k,
                               top_p, typical_p)


def test_defaults_are_llama_cpp_defaults():
    p = SamplingParams()
    assert (p.temp, p.top_k, p.top_p, p.min_p, p.typical_p, p.repeat_penalty, p.repeat_last_n) == (
        0.8, 40, 0.95, 0.05, 1.0, 1.0, 64)


def test_penalties_divide_positive_multiply_negative_and_count():
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    apply_penalties(logits, [0, 1, 0, 3], repeat=2.0, freq=0.1, present=0.5)
    # token 0: seen twice -> 2/2 - 2*0.1 - 0.5; token 1: -2*2 - 0.1 - 0.5; token 2 untouched; token 3: 0.5/2 - 0.6
    np.testing.assert_allclose(logits, [1.0 - 0.2 - 0.5, -4.0 - 0.6, 1.0, 0.25 - 0.6], rtol=1e-6)


def test_top_k_sorts_and_keeps_k():
    ids, lg = top_k(np.arange(5), np.array([1, 5, 3, 4, 2], np.float32), 3, 0)
    assert ids.tolist() == [1, 3, 2]
    ids, lg = top_k(np.arange(5), np.array([1, 5, 3, 4, 2], np.float32), 0, 0)  # k <= 0: all, sorted
    assert ids.tolist() == [1, 3, 2, 4, 0]


def test_top_p_keeps_smallest_prefix_reaching_p():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    ids, _ = top_p(np.arange(4), np.log(probs).astype(np.float32), 0.8, 0)
    assert ids.tolist() == [0, 1]  # 0.5 + 0.3 >= 0.8
    ids, _ = top_p(np.arange(4), np.log(probs).astype(np.float32), 0.81, 0)
    assert ids.tolist() == [0, 1, 2]
    ids, _ = top_p(np.arange(4), np.log(probs).astype(np.float32), 1.0, 0)
    assert len(ids) == 4


def test_min_p_relative_to_max():
    probs = np.array([0.5, 0.3, 0.02, 0.18])
    ids, _ = min_p(np.arange(4), np.log(probs).astype(np.float32), 0.1, 0)  # threshold 0.05
    assert sorted(ids.tolist()) == [0, 1, 3]


def test_typical_keeps_tokens_closest_to_entropy():
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    ids, _ = typical_p(np.arange(4), np.log(probs).astype(np.float32), 0.5, 0)
    ent = -(probs * np.log(probs)).sum()
    order = np.argsort(np.abs(-np.log(probs) - ent), kind="stable")
    cum = np.cumsum(probs[order])
    n = int(np.argmax(cum > 0.5)) + 1
    assert ids.tolist() == order[:n].tolist()


def test_temperature_zero_is_argmax():
    ids, lg = temperature(np.arange(3), np.array([0.1, 3.0, 2.0], np.float32), 0.0)
    assert ids.tolist() == [1]


def test_greedy_sampler_ignores_rng_and_applies_penalty():
    logits = np.array([1.0, 3.0, 2.9], np.float32)
    s = Sampler(SamplingParams(temp=0, repeat_penalty=1.5), 3)
    assert s.sample(logits) == 1
    s.accept(1)
    assert s.sample(logits) == 2  # 3.0/1.5 = 2.0 < 2.9


def test_seed_reproducible_and_distribution_follows_softmax():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(100).astype(np.float32)
    params = dict(temp=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = [Sampler(SamplingParams(seed=42, **params)).sample(logits) for _ in range(3)]
    assert len(set(a)) == 1
    s = Sampler(SamplingParams(seed=7, **params))
    counts = np.bincount([s.sample(logits) for _ in range(20000)], minlength=100) / 20000
    # 20000 draws: the standard error per bin is <= 0.0035, so 0.02 is ~6 sigma
    assert np.abs(counts - softmax(logits)).max() < 0.02


def test_top_k_one_is_deterministic_at_any_temperature():
    logits = np.array([0.0, 1.0, 0.5], np.float32)
    s = Sampler(SamplingParams(temp=5.0, top_k=1, seed=1))
    assert {s.sample(logits) for _ in range(50)} == {1}


def test_logit_bias_forces_a_token():
    s = Sampler(SamplingParams(temp=0, logit_bias={2: 100.0}))
    assert s.sample(np.array([5.0, 4.0, 0.0], np.float32)) == 2


def test_repeat_last_n_window():
    s = Sampler(SamplingParams(temp=0, repeat_penalty=10.0, repeat_last_n=2))
    for t in [0, 1, 2]:
        s.accept(t)
    assert list(s.history) == [1, 2]


def test_invalid_params():
    with pytest.raises(ValueError):
        Sampler(SamplingParams(repeat_last_n=-5))
