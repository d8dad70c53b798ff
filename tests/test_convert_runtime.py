"""Converted files run: our conversions of the shared checkpoints load in the runtime and reproduce llama.cpp's
logits and greedy text (tolerances as in test_model_golden.py)."""

import json
import subprocess
import sys

import numpy as np

from llamacpy.generation import Session
from llamacpy.model import LlamaModel
from llamacpy.sampling import Sampler, SamplingParams
from shared import golden_dir, models_dir


def convert(src, out, *extra):
    r = subprocess.run([sys.executable, "-m", "llamacpy", "convert", str(src), "--outfile", str(out), *extra],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def test_converted_hf_and_meta_give_golden_logits(tmp_path):
    g = np.load(golden_dir() / "logits" / "llamacpp-f32.npz")
    for src in ("hf-tiny-llama", "meta-tiny-llama"):
        m = LlamaModel.load(convert(models_dir() / src, tmp_path / f"{src}.gguf", "--outtype", "f32"), n_ctx=512)
        for i in range(3):
            m.kv.clear()
            ours = m.forward(g[f"p{i}_tokens"], all_logits=True)
            assert np.abs(ours - g[f"p{i}_logits"]).max() <= 0.05


def test_converted_llama2c_generates_the_golden_story(tmp_path):
    src = models_dir() / "llama2c"
    out = tmp_path / "stories.gguf"
    r = subprocess.run([sys.executable, "-m", "llamacpy", "convert", str(src / "stories260K.bin"), "--outfile",
                        str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    case = json.loads((golden_dir() / "greedy.json").read_text())["cases"][0]
    assert case["model"] == "stories260K.gguf"
    s = Session(LlamaModel.load(out, n_ctx=128))
    ours = list(s.generate(case["prompt_tokens"], Sampler(SamplingParams(temp=0)), n_predict=len(case["tokens"])))
    assert ours == case["tokens"]
