"""The llama-cpp-python-shaped `Llama` API on stories260K (real, trained) and tiny random models."""

import json

import numpy as np
import pytest

from llamacpy import Llama
from llamacpy.errors import ContextError, GGUFError, ModelError
from shared import golden_dir, models_dir
from tiny_models import write_tiny_llama


@pytest.fixture
def llm():
    # a fresh object per test (loading stories260K takes milliseconds): no test sees another's cache or scores
    return Llama(str(models_dir() / "stories260K.gguf"), n_ctx=256, verbose=False, logits_all=True)


def greedy_case(model="stories260K.gguf", idx=0):
    cases = json.loads((golden_dir() / "greedy.json").read_text())["cases"]
    return [c for c in cases if c["model"] == model][idx]


def test_tokenize_detokenize_roundtrip(llm):
    case = greedy_case()
    assert llm.tokenize(case["prompt"].encode()) == case["prompt_tokens"]
    assert llm.tokenize(case["prompt"].encode(), add_bos=False) == case["prompt_tokens"][1:]
    # llama-cpp-python's detokenize: one leading space is dropped only after BOS
    assert llm.detokenize(case["prompt_tokens"]) == case["prompt"].encode()
    assert llm.detokenize(case["prompt_tokens"][1:]) == b" " + case["prompt"].encode()


def test_eval_scores_all_positions(llm):
    g = np.load(golden_dir() / "logits" / "stories260K.npz")
    llm.reset()
    llm.eval(g["p0_tokens"].tolist())
    assert llm.scores.shape == (len(g["p0_tokens"]), 512) and llm.scores.dtype == np.float32
    np.testing.assert_allclose(llm.scores, g["p0_logits"], atol=0.05)
    assert llm.n_tokens == len(g["p0_tokens"])
    llm.reset()
    assert llm.n_tokens == 0


def test_greedy_completion_is_the_golden_story(llm):
    case = greedy_case()
    out = llm.create_completion(case["prompt"], max_tokens=48, temperature=0)
    assert out["object"] == "text_completion"
    choice = out["choices"][0]
    assert choice["text"] == case["text"]
    assert choice["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 48, "total_tokens": 53}


def test_stream_chunks_concatenate_to_the_same_text(llm):
    case = greedy_case()
    chunks = list(llm(case["prompt"], max_tokens=48, temperature=0, stream=True))
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == case["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_string_truncates_and_reports_stop(llm):
    case = greedy_case()
    out = llm(case["prompt"], max_tokens=48, temperature=0, stop=["Lily"])
    assert out["choices"][0]["text"] == case["text"].split("Lily")[0]
    assert out["choices"][0]["finish_reason"] == "stop"


def test_generate_yields_tokens_and_reuses_prefix(llm, monkeypatch):
    case = greedy_case()
    it = llm.generate(case["prompt_tokens"], temp=0)
    got = [next(it) for _ in range(10)]
    assert got == case["tokens"][:10]  # llama.cpp's greedy story
    # a second call whose prompt extends what is cached evaluates only the new tokens and continues the story
    session = llm._require_model()
    evaluated = []
    real_eval = session.eval
    monkeypatch.setattr(session, "eval", lambda toks, *a, **k: evaluated.append(list(toks)) or real_eval(toks, *a, **k))
    prompt = case["prompt_tokens"] + case["tokens"][:9]  # the cache holds the prompt and 9 of the 10 tokens
    it = llm.generate(prompt, temp=0)
    assert [next(it) for _ in range(5)] == case["tokens"][9:14]
    assert evaluated[0] == case["tokens"][8:9]  # the last prompt token only (its logits are needed): prefix reused


def test_seeded_sampling_is_reproducible(llm):
    a = llm("Once upon a time", max_tokens=24, seed=123)["choices"][0]["text"]
    b = llm("Once upon a time", max_tokens=24, seed=123)["choices"][0]["text"]
    assert a == b


def test_eos_ends_with_stop(llm):
    # force EOS (id 2) with a logit bias: the completion ends at once with finish_reason "stop"
    out = llm("Once upon a time", max_tokens=10, temperature=0, logit_bias={2: 100.0})
    assert out["choices"][0] == {"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}


def test_prompt_longer_than_context(llm):
    with pytest.raises(ContextError, match="exceed context window"):
        llm("hello " * 300, max_tokens=1)


def test_vocab_only_loads_tokenizer_without_weights():
    v = Llama(str(golden_dir() / "tokenizer" / "ggml-vocab-llama-spm.gguf"), vocab_only=True, verbose=False)
    assert v.n_vocab() == 32000 and v.token_bos() == 1
    assert v.tokenize(b"Hello world", add_bos=False) == [15043, 3186]
    with pytest.raises(RuntimeError, match="vocab_only"):
        v.eval([1])


def test_bad_files(tmp_path):
    with pytest.raises(GGUFError, match="no such file"):
        Llama(str(tmp_path / "missing.gguf"), verbose=False)
    p = write_tiny_llama(tmp_path / "gpt.gguf", arch="gpt2")
    with pytest.raises(ModelError, match="unsupported architecture 'gpt2'"):
        Llama(str(p), verbose=False)


def test_unsupported_tensor_type_is_named(tmp_path):
    p = write_tiny_llama(tmp_path / "iq.gguf", tensor_type_overrides={"blk.1.ffn_up.weight": 20})  # IQ4_NL
    with pytest.raises(ModelError, match=r"blk\.1\.ffn_up\.weight.*IQ4_NL"):
        Llama(str(p), verbose=False)


def test_missing_tensor_is_named(tmp_path):
    from llamacpy.gguf_file import GGUFFile
    from llamacpy.gguf_writer import TensorSpec, copy_kvs, write_gguf

    src = GGUFFile(write_tiny_llama(tmp_path / "full.gguf"))
    specs = [TensorSpec(n, t.shape, t.ggml_type, (lambda n=n: src.tensor(n))) for n, t in src.tensors.items()
             if n != "blk.1.attn_k.weight"]
    write_gguf(tmp_path / "broken.gguf", copy_kvs(src), specs)
    with pytest.raises(ModelError, match=r"missing tensor 'blk\.1\.attn_k\.weight'"):
        Llama(str(tmp_path / "broken.gguf"), verbose=False)


def test_tied_embeddings_use_token_embd_as_output(tmp_path):
    llm = Llama(str(write_tiny_llama(tmp_path / "tied.gguf", tied=True)), verbose=False, logits_all=True)
    llm.eval([1, 5, 6])
    x = llm.model.tok_embd.get_rows([1])
    assert llm.scores.shape == (3, llm.n_vocab()) and np.isfinite(llm.scores).all()
    assert llm.model.output is llm.model.tok_embd and x.shape[1] == 32


def test_vocab_size_larger_than_token_list(tmp_path):
    # as in files llama.cpp converts from checkpoints whose embedding has padding rows: the model has 16 more
    # output rows than the vocabulary has tokens; only decodable ids are ever sampled
    llm = Llama(str(write_tiny_llama(tmp_path / "padded.gguf", pad_vocab=16)), verbose=False, logits_all=True)
    n_tokens = llm.n_vocab()
    assert llm.model.n_vocab == n_tokens + 16
    llm.eval([1, 5])
    assert llm.scores.shape == (2, n_tokens + 16)
    out = llm.create_completion([1, 5], max_tokens=5, temperature=0, logit_bias={n_tokens + 3: 1000.0})
    assert out["usage"]["completion_tokens"] >= 1  # the padding id was not chosen (it would have no text)
    toks = [t for _, t in zip(range(20), llm.generate([1, 5], temp=1.0, seed=1, logit_bias={n_tokens + 3: 1000.0}))]
    assert max(toks) < n_tokens
