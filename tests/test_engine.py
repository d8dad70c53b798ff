"""The serving engine on stories260K: batching is exact, slots are reused by prefix, cancel/queue/shift/stop."""

import threading
import time

import numpy as np
import pytest

from llamacpy.engine import CompletionRequest, Engine, InvalidRequest, QueueFull
from llamacpy.errors import ContextError
from llamacpy.model import LlamaModel
from llamacpy.sampling import SamplingParams
from llamacpy.tokenizer import load_tokenizer
from shared import models_dir

PROMPTS = ["Once upon a time", "The cat", "Lily and Tom went to the park. They saw a big dog and", "A",
           "One day, a little boy named Tim", "She", "The sun was shining and the birds were singing. Mom said",
           "Max had a red ball"]


@pytest.fixture(scope="module")
def model():
    return LlamaModel.load(models_dir() / "stories260K.gguf", n_ctx=1024)


@pytest.fixture(scope="module")
def tok(model):
    return load_tokenizer(model.gguf.metadata, model.path)


LEADS = ["Then", "Yesterday", "Suddenly", "Today", "Later", "Once", "Now", "Soon"]  # distinct first words


def _req(tok, text, **kw):
    kw.setdefault("params", SamplingParams(temp=0))
    return CompletionRequest(tok.tokenize(text.encode(), add_bos=True), **kw)


def _collect(h):
    evs = list(h)
    return "".join(e.text for e in evs), [e.probs for e in evs[:-1]], evs[-1]


def _requests(tok):
    """16 distinct prompts of mixed lengths (no two share more than BOS and a word, so none reuses another's
    cells), greedy and seeded sampling, with top-2 probabilities."""
    out = []
    for i in range(16):
        p = SamplingParams(temp=0) if i % 3 else SamplingParams(temp=0.8, seed=100 + i)
        text = PROMPTS[i] if i < len(PROMPTS) else f"{LEADS[i - len(PROMPTS)]} {PROMPTS[i - len(PROMPTS)].lower()}"
        out.append(_req(tok, text, n_predict=8 + 5 * (i % 5), params=p, n_probs=2))
    return out


def test_sixteen_requests_on_four_slots_equal_each_alone(model, tok):
    """Each request's text and per-token probabilities are exactly what it gets alone, although it shared steps
    with up to three others (and slots that served other prompts: overlaps of BOS and a word are not reused)."""
    alone = Engine(model, tok, n_slots=1)
    try:
        ref = [_collect(alone.submit(r)) for r in _requests(tok)]
    finally:
        alone.shutdown()
    eng = Engine(model, tok, n_slots=4, queue_size=16)
    try:
        handles = [eng.submit(r) for r in _requests(tok)]
        got = [_collect(h) for h in handles]
        assert eng.metrics()["n_decode_total"] < sum(r[2].timings["predicted_n"] for r in ref)  # really batched
    finally:
        eng.shutdown()
    for (t_ref, p_ref, f_ref), (t, p, f) in zip(ref, got):
        assert t == t_ref and p == p_ref
        assert f.finish_reason == f_ref.finish_reason and f.timings["predicted_n"] == f_ref.timings["predicted_n"]


def test_long_prompt_does_not_stall_a_stream(model, tok):
    """With prompt chunks of 8 tokens, a stream keeps getting tokens while a 60-token prompt is read."""
    order = []
    lock = threading.Lock()
    done = threading.Event()

    def rec(name):
        def f(ev):
            with lock:
                order.append((name, ev.finish_reason))
            if name == "long" and ev.finish_reason:
                done.set()
        return f

    eng = Engine(model, tok, n_slots=2, n_batch=64, n_ubatch=8)
    try:
        eng.submit(_req(tok, "Once upon a time", n_predict=40), on_event=rec("stream"))
        long_prompt = tok.tokenize(" ".join(PROMPTS).encode(), add_bos=True)[:60]
        eng.submit(CompletionRequest(long_prompt, n_predict=2, params=SamplingParams(temp=0)), on_event=rec("long"))
        assert done.wait(60)
    finally:
        eng.shutdown()
    first_long = next(i for i, (n, _) in enumerate(order) if n == "long")
    assert sum(1 for n, _ in order[:first_long] if n == "stream") >= 5  # 60 tokens = 8 chunks, a token each


def test_prefix_reuse_counts_cached_tokens(model, tok):
    eng = Engine(model, tok, n_slots=2)
    try:
        a = _req(tok, "Lily and Tom went to the park. They saw a big dog and", n_predict=4)
        _, _, fa = _collect(eng.submit(a))
        b = CompletionRequest(a.prompt_tokens + tok.tokenize(b" it was", add_bos=False), n_predict=4,
                              params=SamplingParams(temp=0), n_probs=1)
        _, pb, fb = _collect(eng.submit(b))
        tb = fb.timings
        assert tb["id_slot"] == fa.timings["id_slot"]
        assert tb["n_cached"] >= len(a.prompt_tokens) and tb["prompt_n"] == len(b.prompt_tokens) - tb["n_cached"]
        # the same prompt again: everything cached but the last token (evaluated again for its logits)
        _, _, fc = _collect(eng.submit(CompletionRequest(b.prompt_tokens, n_predict=1, params=SamplingParams(temp=0))))
        assert fc.timings["n_cached"] == len(b.prompt_tokens) - 1 and fc.timings["prompt_n"] == 1
        m = eng.metrics()
        assert m["requests_processing"] == 0 and m["prompt_tokens_total"] == len(a.prompt_tokens) + tb["prompt_n"] + 1
    finally:
        eng.shutdown()
    fresh = Engine(model, tok, n_slots=1)
    try:
        _, pf, _ = _collect(fresh.submit(CompletionRequest(b.prompt_tokens, n_predict=4, params=SamplingParams(temp=0),
                                                           n_probs=1)))
    finally:
        fresh.shutdown()
    # the reused cells came from other batch shapes: float32 rounding of a different BLAS row count only
    assert [p[0][0] for p in pb] == [p[0][0] for p in pf]
    assert np.allclose([p[0][1] for p in pb], [p[0][1] for p in pf], atol=1e-3)


def test_cancel_frees_the_slot(model, tok):
    eng = Engine(model, tok, n_slots=1)
    try:
        h = eng.submit(_req(tok, "Once upon a time", n_predict=-1, ignore_eos=True))
        for _ in range(3):
            assert h.get(timeout=30).finish_reason is None
        h.cancel()
        ev = None
        while ev is None or ev.finish_reason is None:
            ev = h.get(timeout=30)
        assert ev.finish_reason == "cancelled"
        text, _, f = _collect(eng.submit(_req(tok, "The cat", n_predict=3)))
        assert f.finish_reason == "length" and f.timings["predicted_n"] == 3
        assert all(not s["is_processing"] for s in eng.slots()) and eng.metrics()["requests_processing"] == 0
    finally:
        eng.shutdown()


def test_queue_full_and_shutdown_cancels(model, tok):
    eng = Engine(model, tok, n_slots=1, queue_size=1)
    h1 = eng.submit(_req(tok, "Once upon a time", n_predict=-1, ignore_eos=True))
    assert h1.get(timeout=30).finish_reason is None  # h1 holds the slot
    h2 = eng.submit(_req(tok, "The cat", n_predict=5))
    with pytest.raises(QueueFull):
        eng.submit(_req(tok, "A", n_predict=5))
    assert eng.metrics()["requests_deferred"] == 1
    eng.shutdown()
    assert list(h1)[-1].finish_reason == "cancelled" and list(h2)[-1].finish_reason == "cancelled"


def test_context_shift_and_limit(model, tok):
    eng = Engine(model, tok, n_slots=2, n_ctx_slot=48)
    try:
        _, _, f = _collect(eng.submit(_req(tok, "Once upon a time", n_predict=120, ignore_eos=True, n_keep=2)))
        assert f.finish_reason == "length" and f.timings["predicted_n"] == 120  # ran through several shifts
        _, _, f = _collect(eng.submit(_req(tok, "Once upon a time", n_predict=120, ignore_eos=True,
                                           context_shift=False)))
        assert f.finish_reason == "length" and f.timings["predicted_n"] == 48 - f.timings["n_prompt_tokens"]  # llama-server: stop at n_past + 1 >= n_ctx
        with pytest.raises(ContextError, match="context size"):
            eng.submit(CompletionRequest([1] * 48, context_shift=False))
        # with context shift a prompt over the window is truncated (llama-server's block erase) and served
        _, _, f = _collect(eng.submit(CompletionRequest([1] + [400] * 60, n_predict=2, params=SamplingParams(temp=0))))
        assert f.finish_reason == "length" and f.timings["truncated"] and f.timings["n_prompt_tokens"] < 48
    finally:
        eng.shutdown()


def test_stop_string_and_bad_requests(model, tok):
    eng = Engine(model, tok, n_slots=1)
    try:
        full, _, _ = _collect(eng.submit(_req(tok, "Once upon a time", n_predict=20)))
        word = full.split()[3]
        text, _, f = _collect(eng.submit(_req(tok, "Once upon a time", n_predict=20, stop=[" " + word])))
        assert f.finish_reason == "stop" and f.stop_word == " " + word
        assert text == full[:full.index(" " + word)]
        with pytest.raises(InvalidRequest, match="empty"):
            eng.submit(CompletionRequest([]))
        with pytest.raises(InvalidRequest, match="out of range"):
            eng.submit(CompletionRequest([1, 10 ** 6]))
    finally:
        eng.shutdown()


def test_embed_runs_between_requests(model, tok):
    eng = Engine(model, tok, n_slots=2)
    try:
        toks = tok.tokenize(b"Once upon a time", add_bos=True)
        h = eng.submit(_req(tok, "The cat", n_predict=10))
        e1 = eng.embed(toks)
        e2 = eng.embed(toks)
        assert e1.shape == (model.cfg.n_embd,) and np.array_equal(e1, e2)
        assert list(h)[-1].finish_reason == "length"
    finally:
        eng.shutdown()
    model.reset_cache(1, 64)
    hidden = model.forward_batch(toks, range(len(toks)), [0] * len(toks), "hidden")
    np.testing.assert_allclose(e1, hidden.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_llama_completions_from_threads_are_batched():
    """Four threads on one Llama: each gets the text it gets alone, and the engine decoded them together."""
    from llamacpy import Llama

    llm = Llama(str(models_dir() / "stories260K.gguf"), n_ctx=256, verbose=False, n_parallel=4)
    try:
        prompts = PROMPTS[:4]
        alone = [llm(p, max_tokens=60, temperature=0)["choices"][0]["text"] for p in prompts]
        steps0 = llm._engine.metrics()["n_decode_total"]
        got = [None] * 4
        barrier = threading.Barrier(4)

        def work(i):
            barrier.wait()
            got[i] = llm(prompts[i], max_tokens=60, temperature=0)["choices"][0]["text"]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert got == alone
        m = llm._engine.metrics()
        assert m["n_decode_total"] - steps0 < 4 * 60 and m["requests_processing"] == 0
        it = llm.create_completion(prompts[0], max_tokens=60, temperature=0, stream=True)
        next(it)
        it.close()  # a stream dropped early frees its slot
        for _ in range(1000):  # freed at the engine's next step
            if llm._engine.metrics()["requests_processing"] == 0:
                break
            time.sleep(0.01)
        assert all(not s["is_processing"] for s in llm._engine.slots())
    finally:
        llm.close()


def test_failed_step_ends_its_requests_and_the_engine_goes_on(model, tok, monkeypatch):
    eng = Engine(model, tok, n_slots=2)
    try:
        real = model.forward_batch
        calls = {"n": 0}

        def flaky(*a, **k):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("boom")
            return real(*a, **k)

        monkeypatch.setattr(model, "forward_batch", flaky)
        _, _, f = _collect(eng.submit(_req(tok, "Once upon a time", n_predict=3)))
        assert f.finish_reason == "error" and "boom" in f.error
        _, _, f = _collect(eng.submit(_req(tok, "Once upon a time", n_predict=3)))
        assert f.finish_reason == "length" and f.timings["predicted_n"] == 3 and f.timings["n_cached"] == 0
        _, _, f = _collect(eng.submit(_req(tok, "The cat", n_predict=0)))  # n_predict 0: the prompt is cached
        assert f.finish_reason == "length" and f.timings["predicted_n"] == 0 and f.text == ""
    finally:
        eng.shutdown()


def test_a_failing_event_callback_cancels_only_its_request(model, tok):
    eng = Engine(model, tok, n_slots=2)
    try:
        def bad(ev):
            raise OSError("client gone")

        eng.submit(_req(tok, "Once upon a time", n_predict=50), on_event=bad)
        _, _, f = _collect(eng.submit(_req(tok, "The cat", n_predict=20)))
        assert f.finish_reason == "length"
        for _ in range(1000):
            if eng.metrics()["requests_processing"] == 0:
                break
            time.sleep(0.01)
        assert eng.metrics()["requests_processing"] == 0
    finally:
        eng.shutdown()


@pytest.fixture(scope="module")
def q8():
    """A model whose matrices compute prompt rows independently of the call (the SIMD decode kernels)."""
    m = LlamaModel.load(models_dir() / "tiny-llama-Q8_0.gguf", n_ctx=1024)
    return m, load_tokenizer(m.gguf.metadata, m.path)


def test_prompt_cut_at_block_multiples_gives_the_same_bits(q8, model):
    """forward_batch of a 197-token prompt as one chunk, as chunks of PROMPT_BLOCK and of 2 blocks (tails of 5
    and of 69 rows): the last token's logits are bit-identical -- what lets the engine cut prompts by load."""
    from llamacpy.model import PROMPT_BLOCK

    from llamacpy.kernels.linear import uses_simd

    m, _ = q8
    assert not model.prompt_split_exact()  # stories260K: F32 matrices (sgemm path)
    # Q8_0 at an explicit-SIMD level: prompt rows by the decode kernel / its bit-exact GEMM; at LLAMACPY_ISA=generic
    # the f32-tile + sgemm path, whose rows depend on the call (the engine then keeps one chunk size)
    assert m.prompt_split_exact() == uses_simd(8)
    if not uses_simd(8):
        return
    toks = np.random.default_rng(1).integers(3, m.cfg.n_vocab, 197).tolist()
    outs = []
    for cuts in ([197], [PROMPT_BLOCK] * 3 + [5], [2 * PROMPT_BLOCK, 69]):
        m.reset_cache(1, 256)
        i = 0
        for c in cuts:
            logits = m.forward_batch(toks[i:i + c], range(i, i + c), [0] * c, "last")
            i += c
        outs.append(logits)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_long_prompt_in_busy_chunks_equals_it_alone(q8, monkeypatch):
    """A 300-token prompt read in large chunks alone, and in PROMPT_BLOCK chunks beside a stream (that also
    got tokens between its chunks): the same text and probabilities at temperature 0, bit for bit."""
    import llamacpy.engine as engine_mod

    m, tk = q8
    monkeypatch.setattr(engine_mod, "STEP_TARGET_S", 1e9)  # alone: n_ubatch chunks whatever this machine's speed
    rows = []
    real = m.forward_batch
    monkeypatch.setattr(m, "forward_batch", lambda t, *a, **k: rows.append(len(t)) or real(t, *a, **k))
    rng = np.random.default_rng(2)
    long_prompt = [tk.bos_id] + rng.integers(3, m.cfg.n_vocab, 299).tolist()

    def req():
        return CompletionRequest(list(long_prompt), n_predict=12, params=SamplingParams(temp=0), n_probs=2)

    alone = Engine(m, tk, n_slots=1, n_ubatch=512, n_ctx_slot=512)
    if not m.prompt_split_exact():  # LLAMACPY_ISA=generic: rows depend on the call, so prompts are never cut by load
        alone.shutdown()
        assert alone.n_chunk_alone == alone.n_chunk_busy == 512
        return
    try:
        assert alone.n_chunk_alone == 512 and alone.n_chunk_busy == 64
        ref = _collect(alone.submit(req()))
    finally:
        alone.shutdown()
    assert rows[:2] == [64, 236]  # the first chunk before any rate is measured, then the rest at once
    rows.clear()
    eng = Engine(m, tk, n_slots=2, n_ubatch=512, n_ctx_slot=512)
    order = []
    long_events = []
    done = threading.Event()

    def on_long(ev):
        order.append("long")
        long_events.append(ev)
        if ev.finish_reason:
            done.set()

    try:
        eng.submit(CompletionRequest([tk.bos_id, 300, 301], n_predict=40, params=SamplingParams(temp=0)),
                   on_event=lambda ev: order.append("stream"))
        while not order:
            time.sleep(0.001)
        n0 = len(order)
        eng.submit(req(), on_event=on_long)
        assert done.wait(120)
    finally:
        eng.shutdown()
    text = "".join(e.text for e in long_events)
    assert text == ref[0] and [e.probs for e in long_events[:-1]] == ref[1]
    assert long_events[-1].timings["prompt_n"] == 300
    first_long = order.index("long")
    assert order[n0:first_long].count("stream") >= 4  # 300 tokens = 5 chunks of 64, the stream decoded beside
    assert max(rows) <= 64 + 1


def test_long_prompt_other_ubatch_same_text(model, tok):
    """stories260K (sgemm prompt path: one chunk size a model): the same text at temperature 0 for a 200-token
    prompt read in 512- and in 16-token chunks (other BLAS row counts round ~1e-5 relative: not bits)."""
    prompt = tok.tokenize(" ".join(PROMPTS * 3).encode(), add_bos=True)[:200]
    texts = []
    for ub in (512, 16):
        eng = Engine(model, tok, n_slots=1, n_ubatch=ub)
        try:
            assert eng.n_chunk_busy == eng.n_chunk_alone == ub
            texts.append(_collect(eng.submit(CompletionRequest(list(prompt), n_predict=24,
                                                               params=SamplingParams(temp=0))))[0])
        finally:
            eng.shutdown()
    assert texts[0] == texts[1] and texts[0]


def test_short_request_gets_a_step_of_its_own_beside_a_long_prompt(q8, monkeypatch):
    """A 3-token request that comes while a 300-token prompt is read: its prompt is the next step alone (its
    first token after a short step), then the long prompt's 64-token chunks go on beside its generation."""
    m, tk = q8
    # the chunk policy of split-exact models (the SIMD levels); at LLAMACPY_ISA=generic Q8_0 is not, and the
    # policy is checked the same way (only the order of chunk sizes is asserted here, not bits)
    monkeypatch.setattr(m, "prompt_split_exact", lambda: True)
    rows = []
    entered, go = threading.Event(), threading.Event()
    real = m.forward_batch

    def fb(t, *a, **k):
        rows.append(len(t))
        entered.set()
        go.wait(30)
        return real(t, *a, **k)

    monkeypatch.setattr(m, "forward_batch", fb)
    eng = Engine(m, tk, n_slots=2, n_ubatch=512, n_ctx_slot=512)
    try:
        long_prompt = [tk.bos_id] + np.random.default_rng(3).integers(3, m.cfg.n_vocab, 299).tolist()
        h_long = eng.submit(CompletionRequest(long_prompt, n_predict=2, params=SamplingParams(temp=0)))
        assert entered.wait(30)  # the long prompt's first chunk is in the model
        h_short = eng.submit(CompletionRequest([tk.bos_id, 300, 301], n_predict=4, params=SamplingParams(temp=0)))
        go.set()
        _collect(h_short), _collect(h_long)
    finally:
        go.set()
        eng.shutdown()
    assert rows[:3] == [64, 3, 64 + 1]  # first chunk; the short prompt alone; the next chunk + its first token
