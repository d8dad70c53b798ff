"""Llama-3-style GGUF (BPE vocab, rope base 5e5, rope_freqs.weight factors, GQA, tied embeddings) vs llama.cpp.

Tolerances as for the F16 golden files (see test_model_golden.py): max |Δlogit| <= 0.05, same top-1 where
llama.cpp's top-2 gap >= 0.05; greedy teacher-forced: llama.cpp's tokens fed in one batch, our argmax equal to
its token at every step whose top-2 gap is >= 0.05.
"""

import json

import numpy as np
import pytest

from llamacpy import Llama
from llamacpy.model import LlamaModel
from shared import golden_dir, models_dir


@pytest.fixture(scope="module")
def model():
    return LlamaModel.load(models_dir() / "llama3-style-f16.gguf", n_ctx=512)


def test_rope_features_loaded(model):
    assert model.cfg.rope_freq_base == 500000.0
    assert model.freq_factors is not None and model.freq_factors.shape == (model.cfg.n_rot // 2,)
    assert model.output is model.tok_embd  # tied


def test_logits_match_llama_cpp(model):
    g = np.load(golden_dir() / "logits-llama3" / "llama3-style-f16.npz")
    for i in range(3):
        model.kv.clear()
        ref = g[f"p{i}_logits"]
        ours = model.forward(g[f"p{i}_tokens"], all_logits=True)
        assert np.abs(ours - ref).max() <= 0.05
        top2 = np.sort(ref, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) >= 0.05
        assert (ours.argmax(1) == ref.argmax(1))[clear].all()


def test_greedy_teacher_forced_matches_llama_cpp(model):
    from test_model_golden import FIRM_GAP, teacher_forced_check

    cases = json.loads((golden_dir() / "greedy-llama3.json").read_text())["cases"]
    checked = [teacher_forced_check(model, case) for case in cases]
    assert checked == [sum(g >= FIRM_GAP for g in c["top2_gaps"]) for c in cases] == [15, 22]


def test_completion_stops_at_eot():
    llm = Llama(str(models_dir() / "llama3-style-f16.gguf"), n_ctx=128, verbose=False)
    eot = llm.tokenize(b"<|eot_id|>", add_bos=False, special=True)
    assert len(eot) == 1 and llm.tokenizer.is_eog(eot[0])
    out = llm("Hello", max_tokens=20, temperature=0, logit_bias={eot[0]: 100.0})
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == 0


def test_cli_run_stops_at_eot(capsys):
    from cli_inproc import run_cli

    llm = Llama(str(models_dir() / "llama3-style-f16.gguf"), vocab_only=True, verbose=False)
    eot = llm.tokenize(b"<|eot_id|>", add_bos=False, special=True)[0]
    out = run_cli(capsys, "run", "-m", models_dir() / "llama3-style-f16.gguf", "-p", "Hello", "-n", "20", "--temp",
                  "0", "-c", "128", "-l", f"{eot}+100")
    assert out.returncode == 0, out.stderr
    assert "[end of text]" in out.stderr
    assert "eval time =       0.00 ms /     0 runs" in out.stderr  # stopped at the first sampled token
    assert out.stdout == "Hello\n"
