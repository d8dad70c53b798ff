"""Each sampler of the chain against hand-worked distributions (llama.cpp b4748's src/llama-sampling.cpp), and
llama.cpp's RNG against values printed by libstdc++ (g++ 12: std::mt19937, discrete_distribution<int>,
uniform_real_distribution<float>). Every threshold here sits far from the values compared with it, so no result
depends on the last bit of a CPU's float exp/log."""

import numpy as np
import pytest

from llamacpy.rng import MT19937, discrete_draw, resolve_seed
from llamacpy.sampling import (DRY, XTC, Candidates, Dist, LogitBias, MinP, Mirostat, MirostatV2, Penalties,
                               Sampler, SamplingParams, TempExt, TopK, TopNSigma, TopP, Typical, samplers_from_chars,
                               samplers_from_names, softmax_impl)

F32 = np.float32


def cand(values, log=True):
    """Candidates in id order from probabilities (as logits ln p) or raw logits."""
    v = np.asarray(values, np.float64)
    return Candidates(np.arange(len(v)), np.log(v).astype(F32) if log else v.astype(F32))


# -- the RNG ------------------------------------------------------------------------------------------

def test_mt19937_matches_the_standard_and_libstdcxx():
    g = MT19937()  # default seed 5489: the C++ standard requires the 10000th output to be 4123659995
    for _ in range(9999):
        g.next_u32()
    assert g.next_u32() == 4123659995
    g = MT19937(42)  # printed by g++ 12's std::mt19937(42)
    assert [g.next_u32() for _ in range(5)] == [1608637542, 3421126067, 4083286876, 787846414, 3143890026]


def test_discrete_distribution_and_uniform_float_match_libstdcxx():
    g = MT19937(7)  # std::discrete_distribution<int>({0.5, 0.25, 0.125, 0, 0.125}) drawn 20 times with mt19937(7)
    w = np.array([0.5, 0.25, 0.125, 0.0, 0.125], F32)
    assert [discrete_draw(g, w) for _ in range(20)] == [0, 0, 4, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 1, 1, 1, 0, 4, 0, 2]
    g = MT19937(42)  # std::uniform_real_distribution<float>(0, 1) (one 32-bit output per value)
    got = [float(g.uniform_float()) for _ in range(3)]
    assert got == [float(F32(0.37454012)), float(F32(0.796543002)), float(F32(0.95071429))]


def test_a_single_weight_draws_no_random_numbers():
    g = MT19937(3)
    assert discrete_draw(g, np.array([1.0], F32)) == 0
    assert g.next_u32() == MT19937(3).next_u32()  # libstdc++ keeps no table for < 2 weights and draws nothing


def test_seed_rule():
    assert resolve_seed(5) == 5
    assert resolve_seed(-2) == 0xFFFFFFFE  # llama.cpp parses -s as unsigned 32-bit
    draws = {resolve_seed(-1) for _ in range(4)}  # LLAMA_DEFAULT_SEED: fresh random seeds
    assert len(draws) > 1 and all(0 <= s < 2**32 for s in draws)


# -- the samplers, one at a time ------------------------------------------------------------------------

def test_softmax_sorts_and_normalises():
    c = cand([1.0, 3.0, 2.0], log=False)
    softmax_impl(c)
    e = np.exp([0.0, -1.0, -2.0])
    assert c.ids.tolist() == [1, 2, 0] and c.sorted
    np.testing.assert_allclose(c.p, e / e.sum(), rtol=1e-6)  # float32 arithmetic: 1e-6 relative


def test_top_k_keeps_k_sorted_and_k_zero_or_past_vocab_sorts_all():
    logits = [1, 5, 3, 4, 2]
    c = cand(logits, log=False)
    TopK(2).apply(c)
    assert c.ids.tolist() == [1, 3]
    for k in (0, -1, 5, 10):  # k <= 0 means "all" and, as in b4748, still sorts; k >= vocab keeps all
        c = cand(logits, log=False)
        TopK(k).apply(c)
        assert c.ids.tolist() == [1, 3, 2, 4, 0] and c.sorted


def test_top_k_buffer_equals_a_stable_sort_with_ties_infinities_and_nan():
    """TopK's one-pass buffer (k <= TOP_K_BUFFER_MAX) keeps the k first of a stable descending sort: equal logits
    by position (also at the k-th place, where argpartition would pick any of them), -inf after finite values,
    NaN last. Also the stable-sort path above the buffer size."""
    from llamacpy.sampling import TOP_K_BUFFER_MAX

    rng = np.random.default_rng(7)
    for trial in range(120):
        n = int(rng.integers(1, 2000))
        k = int(rng.integers(1, min(n, TOP_K_BUFFER_MAX) + 1)) if trial % 10 else min(n, TOP_K_BUFFER_MAX + 9)
        lg = rng.integers(-3, 3, n).astype(F32) if trial % 2 else rng.standard_normal(n).astype(F32)
        lg[rng.random(n) < 0.2] = -np.inf
        if trial % 3 == 0:
            lg[rng.random(n) < 0.1] = np.nan
        want = np.lexsort((np.arange(n), -lg))[:k]  # stable: ties by position; NaN sorts last
        c = Candidates(np.arange(n) + 100, lg.copy())
        TopK(k).apply(c)
        assert c.ids.tolist() == (want + 100).tolist(), (trial, n, k)
        assert c.sorted and c.size == k


def test_top_p_smallest_prefix_reaching_p():
    probs = [0.05, 0.5, 0.15, 0.3]  # sorted: 0.5, 0.3, 0.15, 0.05 -> running 0.5, 0.8, 0.95, 1.0
    for p, kept in ((0.75, [1, 3]), (0.85, [1, 3, 2]), (0.3, [1])):
        c = cand(probs)
        TopP(p, 0).apply(c)
        assert c.ids.tolist() == kept, p
    c = cand(probs)
    TopP(1.0, 0).apply(c)  # p = 1: nothing happens, not even the sort
    assert c.ids.tolist() == [0, 1, 2, 3] and not c.sorted
    c = cand(probs)
    TopP(0.3, 3).apply(c)  # min_keep 3: the first prefix reaching p with >= 3 tokens
    assert c.ids.tolist() == [1, 3, 2]


def test_min_p_relative_to_the_best_keeps_order():
    probs = [0.3, 0.5, 0.02, 0.18]  # p = 0.1: threshold 0.05
    c = cand(probs)
    MinP(0.1, 0).apply(c)
    assert c.ids.tolist() == [0, 1, 3] and not c.sorted  # unsorted input: filtered in place, order kept
    c = cand(probs)
    MinP(0.1, 4).apply(c)  # too few survive: the sorted path keeps min_keep tokens
    assert c.ids.tolist() == [1, 0, 3, 2]
    c = cand(probs)
    MinP(0.0, 0).apply(c)
    assert c.size == 4


def test_typical_hand_worked():
    # p = .4 .3 .2 .1: entropy H = 1.27985; |-ln p - H| = .3636 .0759 .3296 1.0227 -> order ids 1, 2, 0, 3 with
    # running mass .3 .5 .9 1.0; p = 0.45 stops at the first mass above it: ids 1, 2
    probs = [0.4, 0.3, 0.2, 0.1]
    c = cand(probs)
    Typical(0.45, 1).apply(c)
    assert c.ids.tolist() == [1, 2] and not c.sorted
    c = cand(probs)
    Typical(0.45, 0).apply(c)  # llama.cpp tests i >= min_keep - 1 in size_t: min_keep 0 keeps all, reordered
    assert c.ids.tolist() == [1, 2, 0, 3]


def test_temperature_and_greedy():
    c = cand([0.1, 3.0, 2.0, 3.0], log=False)
    TempExt(0.0).apply(c)  # temp <= 0: the first best logit survives, the rest are -inf
    assert np.isfinite(c.logit).tolist() == [False, True, False, False]
    c = cand([1.0, -4.0], log=False)
    TempExt(2.0).apply(c)
    assert c.logit.tolist() == [0.5, -2.0]


def test_dynamic_temperature_hand_worked():
    # logits 2, 0: p = .8808 .1192, entropy .36534 of max ln 2 -> .52708 normalised; temp 1 +- 0.5:
    # exponent 1: T = 0.5 + 1.0 * .52708 = 1.02708 -> logit 2 / T = 1.94727; exponent 2: T = .77781 -> 2.57132
    for exponent, want in ((1.0, 1.94727), (2.0, 2.57132)):
        c = cand([2.0, 0.0], log=False)
        TempExt(1.0, 0.5, exponent).apply(c)
        assert c.logit[1] == 0.0
        assert abs(c.logit[0] - want) < 1e-4  # the hand arithmetic above carries 5 decimals
        np.testing.assert_allclose(c.p.sum(), 1.0, rtol=1e-6)


def test_penalties_divide_positive_multiply_negative_and_count():
    pen = Penalties(64, repeat=2.0, freq=0.1, present=0.5)
    for t in [0, 1, 0, 3]:
        pen.accept(t)
    c = cand([2.0, -2.0, 1.0, 0.5], log=False)
    pen.apply(c)
    # token 0 seen twice: 2/2 - 2*0.1 - 0.5; token 1: -2*2 - 0.1 - 0.5; token 2 untouched; token 3: 0.5/2 - 0.6
    np.testing.assert_allclose(c.logit, [0.3, -4.6, 1.0, -0.35], rtol=1e-6)


def test_penalties_window_and_empty_window():
    pen = Penalties(2, repeat=10.0, freq=0.0, present=0.0)
    for t in [0, 1, 2]:
        pen.accept(t)
    assert list(pen.prev) == [1, 2] and dict(pen.count) == {1: 1, 2: 1}
    for pen in (Penalties(0, 10.0, 1.0, 1.0), Penalties(8, 10.0, 1.0, 1.0)):  # last_n 0, and nothing accepted
        if pen.last_n == 0:
            pen.accept(0)
        c = cand([1.0, 2.0], log=False)
        pen.apply(c)
        assert c.logit.tolist() == [1.0, 2.0]


def test_xtc_drops_the_top_choices_but_the_last_above_threshold():
    c = cand([0.5, 0.3, 0.15, 0.05])
    XTC(1.0, 0.1, 0, seed=1).apply(c)  # probability 1: always; .5 .3 .15 are >= 0.1 -> keep from .15 on
    assert c.ids.tolist() == [2, 3]
    for prob, thr in ((0.0, 0.1), (1.0, 0.6)):  # off, and a threshold above 0.5
        x = XTC(prob, thr, 0, seed=1)
        c = cand([0.5, 0.3, 0.15, 0.05])
        x.apply(c)
        assert c.size == 4
        assert x.rng.next_u32() == MT19937(1).next_u32()  # no random number was used


def test_top_n_sigma_hand_worked():
    # logits 4 3 0 0 -2: mean 1, variance (9+4+1+1+9)/5 = 4.8, sigma 2.19089
    for n, finite in ((1.0, [0, 1]), (2.0, [0, 1, 2, 3])):  # thresholds 1.809 and -0.382
        c = cand([4.0, 3.0, 0.0, 0.0, -2.0], log=False)
        TopNSigma(n).apply(c)
        assert sorted(c.ids[np.isfinite(c.logit)].tolist()) == finite


def test_mirostat_v1_k_from_a_zipf_exponent_of_two():
    # p_i ~ i^-2: every b_i = 2 t_i, so s_hat = 2, eps = 1; tau 5 -> mu 10:
    # k = (1 * 2^10 / (1 - 1000^-1))^(1/2) = 32.016 -> top-32
    n = 1000
    probs = 1.0 / np.arange(1, n + 1) ** 2
    c = cand(probs / probs.sum())
    m = Mirostat(n, seed=3, tau=5.0, eta=0.1)
    m.apply(c)
    assert c.size == 32 and 0 <= c.selected < 32
    surprise = -np.log2(c.p[c.selected])
    assert abs(m.mu - (10.0 - 0.1 * (surprise - 5.0))) < 1e-5  # float32 update


def test_mirostat_v2_truncates_at_surprise_mu():
    # surprises -log2 p of .5 .3 .15 .05: 1, 1.74, 2.74, 4.32; tau 1 -> mu 2 keeps 2 tokens, renormalised .625 .375
    c = cand([0.5, 0.3, 0.15, 0.05])
    m = MirostatV2(seed=3, tau=1.0, eta=0.5)
    m.apply(c)
    np.testing.assert_allclose(c.p, [0.625, 0.375], rtol=1e-6)
    drawn = c.p[c.selected]
    assert abs(m.mu - (2.0 - 0.5 * (-np.log2(drawn) - 1.0))) < 1e-6


def test_dry_penalises_the_token_that_extends_a_repeat():
    # context a b c d a b c (a=10 ...): the suffix "a b c" (length 3) occurred before, followed by d ->
    # d gets multiplier * base^(3 - allowed_length) = 1 * 2^1; c ends "a b" after "a b" at the start too, but the
    # repeat that c would extend is followed by d, so only d (and nothing else) is penalised
    dry = DRY(None, context_size=512, multiplier=1.0, base=2.0, allowed_length=2, penalty_last_n=-1, breakers=[])
    for t in [10, 11, 12, 13, 10, 11, 12]:
        dry.accept(t)
    c = cand(np.zeros(16), log=False)
    dry.apply(c)
    assert c.logit[13] == -2.0
    assert np.count_nonzero(c.logit) == 1
    short = DRY(None, 512, 1.0, 2.0, 2, -1, [])
    for t in [10, 11]:  # no more tokens than allowed_length: nothing to do
        short.accept(t)
    c = cand(np.zeros(16), log=False)
    short.apply(c)
    assert not c.logit.any()


def test_logit_bias_and_all_masked_logits():
    c = cand([5.0, 4.0, 0.0], log=False)
    LogitBias([(2, 100.0), (7, 1.0)]).apply(c)  # an id outside the array is ignored
    assert c.logit.tolist() == [5.0, 4.0, 100.0]
    s = Sampler(SamplingParams(temp=1.0, seed=1, logit_bias={i: float("-inf") for i in range(4)}), 4)
    assert s.sample(np.zeros(4, F32)) in range(4)  # every logit -inf: no crash (llama.cpp picks index 0)


# -- the chain --------------------------------------------------------------------------------------------

def test_defaults_are_llama_cpp_defaults():
    p = SamplingParams()
    assert (p.temp, p.top_k, p.top_p, p.min_p, p.typical_p, p.repeat_penalty, p.repeat_last_n) == (
        0.8, 40, 0.95, 0.05, 1.0, 1.0, 64)
    assert (p.mirostat, p.mirostat_tau, p.mirostat_eta, p.top_n_sigma, p.xtc_probability, p.dry_multiplier) == (
        0, 5.0, 0.1, -1.0, 0.0, 0.0)
    assert p.samplers == ["penalties", "dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]


def test_sampler_order_flags():
    assert samplers_from_names("min_p;temperature;top_k") == ["min_p", "temperature", "top_k"]
    assert samplers_from_names("top-k;temp;nucleus;bogus") == ["top_k", "temperature", "top_p"]
    assert samplers_from_chars("edkypmxt") == list(SamplingParams().samplers)
    assert samplers_from_chars("kz") == ["top_k"]


def test_greedy_does_not_depend_on_the_seed_and_applies_the_penalty():
    logits = np.array([1.0, 3.0, 2.9], np.float32)
    for seed in (1, 2, 12345):
        s = Sampler(SamplingParams(temp=0, repeat_penalty=1.5, seed=seed), 3)
        assert s.sample(logits) == 1
        s.accept(1)
        assert s.sample(logits) == 2  # 3.0 / 1.5 = 2.0 < 2.9


def test_seeded_chain_is_reproducible_and_follows_the_softmax():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(100).astype(np.float32)
    params = dict(temp=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = [Sampler(SamplingParams(seed=42, **params)).sample(logits) for _ in range(3)]
    assert len(set(a)) == 1
    s = Sampler(SamplingParams(seed=7, **params))
    counts = np.bincount([s.sample(logits) for _ in range(20000)], minlength=100) / 20000
    e = np.exp(logits - logits.max())
    # 20000 draws: the standard error per bin is <= 0.0035, so 0.02 is ~6 sigma
    assert np.abs(counts - e / e.sum()).max() < 0.02


def test_reset_replays_the_same_draws():
    logits = np.random.default_rng(1).standard_normal(50).astype(np.float32)
    s = Sampler(SamplingParams(seed=9, temp=1.5, top_k=0, top_p=1.0, min_p=0.0), 50)
    first = [s.sample(logits) for _ in range(10)]
    s.reset()
    assert [s.sample(logits) for _ in range(10)] == first


def test_dist_sees_the_sorted_candidates():
    # one draw from mt19937(5) over probabilities 0.1 (id 0) and 0.9 (id 1): the table is in descending order
    # (0.9, 0.1), so u < 0.9 picks id 1 and u >= 0.9 picks id 0
    u = MT19937(5).canonical_double()
    d = Dist(5)
    c = cand([0.1, 0.9])
    d.apply(c)
    assert int(c.ids[c.selected]) == (1 if u < 0.9 else 0)


def test_n_probs_report_the_chain():
    s = Sampler(SamplingParams(seed=3, top_k=2, temp=1.0, top_p=1.0, min_p=0.0), 4)
    tok = s.sample(np.log(np.array([0.1, 0.6, 0.2, 0.1])).astype(F32))
    top = s.top_probs(5)
    assert [t for t, _ in top] == [1, 2] and tok in (1, 2)
    np.testing.assert_allclose([p for _, p in top], [0.75, 0.25], rtol=1e-6)  # renormalised over the top 2
    assert s.token_prob(3) == 0.0


def test_invalid_params():
    for bad in (dict(repeat_last_n=-5), dict(mirostat=3), dict(samplers=["nope"]), dict(dry_penalty_last_n=-2)):
        with pytest.raises(ValueError):
            Sampler(SamplingParams(**bad))


def _greedy_cases():
    """(params, logits rows): rows with ties, infinities, NaN and every logit -inf, for greedy chains."""
    rng = np.random.default_rng(5)
    n = 64
    rows = [rng.standard_normal(n).astype(F32), rng.integers(0, 3, n).astype(F32)]  # many ties at the max
    r = rng.standard_normal(n).astype(F32)
    r[[3, 40]] = np.inf
    rows.append(r)
    r = rng.standard_normal(n).astype(F32)
    r[7] = np.nan
    rows.append(r)
    r = np.full(n, -np.inf, F32)
    rows.append(r)
    r = rng.standard_normal(n).astype(F32)
    r[:10] = -np.inf
    rows.append(r)
    params = [dict(temp=0.0), dict(temp=-1.0, top_k=1), dict(temp=0.0, top_k=0, top_p=0.5, min_p=0.2, min_keep=3),
              dict(temp=0.0, logit_bias={int(np.argmax(rows[0])): float("-inf"), 5: 2.5, 1000: 1.0}),
              dict(temp=0.0, samplers=["min_p", "temperature", "top_k"]),
              dict(temp=0.0, samplers=["temperature", "top_p", "min_p"]), dict(temp=0.0, samplers=["temperature"]),
              dict(temp=0.0, repeat_penalty=1.0, typical_p=1.0, xtc_probability=0.5, xtc_threshold=0.6)]
    return params, rows


def test_greedy_shortcut_equals_the_chain():
    """A greedy chain's token is found without the candidate arrays (Sampler._greedy); it must be the chain's
    token, and n_probs (top_probs / token_prob) must report the chain's candidates, row for row."""
    params, rows = _greedy_cases()
    for kw in params:
        fast, ref = Sampler(SamplingParams(seed=3, **kw), 64), Sampler(SamplingParams(seed=3, **kw), 64)
        assert fast._greedy_bias is not None, kw
        ref._greedy_bias = None  # the chain, step by step
        for i, row in enumerate(rows):
            try:
                b = ref.sample(row)
            except ValueError as e:  # the chain's own limit (min-p before the sort on a NaN row: no candidate)
                with pytest.raises(type(e)):
                    fast.sample(row)
                continue
            a = fast.sample(row)
            assert a == b, (kw, i)
            ta, tb = fast.top_probs(5), ref.top_probs(5)  # (id, p) pairs; NaN p (infinite logits) equal NaN
            assert [t for t, _ in ta] == [t for t, _ in tb], (kw, i)
            np.testing.assert_array_equal([p for _, p in ta], [p for _, p in tb], err_msg=f"{kw} {i}")
            np.testing.assert_array_equal(fast.token_prob(a), ref.token_prob(b), err_msg=f"{kw} {i}")
            fast.accept(a)
            ref.accept(b)


def test_greedy_shortcut_only_where_the_chain_is_greedy():
    for kw in (dict(temp=0.5), dict(temp=0.0, repeat_penalty=1.1), dict(temp=0.0, typical_p=0.9),
               dict(temp=0.0, xtc_probability=0.5, xtc_threshold=0.1), dict(temp=0.0, dry_multiplier=0.8, dry_sequence_breakers=[]),
               dict(temp=0.0, mirostat=2), dict(temp=0.0, top_n_sigma=1.0), dict(temp=0.0, dynatemp_range=0.5),
               dict(temp=0.0, samplers=["top_k", "top_p"])):
        assert Sampler(SamplingParams(**kw), 64)._greedy_bias is None, kw
    assert Sampler(SamplingParams(temp=0.0))._greedy_bias is None  # no n_vocab: the biases' range is unknown
