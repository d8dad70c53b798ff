"""Seeded sampling and grammar-constrained generation against llama-cli b4748 (golden/sampling.json).

Each of the 108 cases ran `llama-cli -m stories260K.gguf -no-cnv -c 512 -t 2 -n N -s SEED -p PROMPT ARGS`; here
`llamacpy run` gets the same flags and must print the same text. llama-cli's stdout is the echoed prompt, the
generated text, " [end of text]\\n" when EOS was sampled, then "\\n\\n"; ours is the echoed prompt, the generated
text and one "\\n", with " [end of text]" on stderr (where llamacpy puts every non-text line). So the test compares
the echoed prompt + generated text exactly, and that EOS was reported exactly when llama-cli reported it.

A case that cannot match would be a draw whose random value lies within float rounding of a boundary of the
cumulative distribution (our logits differ from llama.cpp's in the last bits): on a mismatch the failure message
shows, for the draw where the texts part, the random value, the boundary nearest to it and the candidate's
probability, so such a case is told apart from a wrong sampler.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from shared import golden_dir, models_dir

EOT = " [end of text]\n"


def _cases():
    try:
        data = json.loads((golden_dir() / "sampling.json").read_text())
    except Exception:  # no shared data: the one test below reports the skip (or the CI failure)
        return []
    return data["cases"]


CASES = _cases()


def _expected(case):
    """(echoed prompt + generated text, EOS reported) from llama-cli's stdout."""
    out = case["stdout"]
    if out.endswith(EOT + "\n\n"):
        return out[: -len(EOT + "\n\n")], True
    assert out.endswith("\n\n"), "llama-cli's stdout ends with its final two newlines"
    return out[:-2], False


def _argv(case, threads=2):
    """The case's command line. In-process runs use one thread: two numba pools in one busy test process are
    slow, and the thread count does not change our logits (the subprocess cases run with -t 2, as llama-cli)."""
    return ["-m", str(models_dir() / case["model"]), "-no-cnv", "-c", "512", "-t", str(threads),
            "-n", str(case["n_predict"]), "-s", str(case["seed"]), "-p", case["prompt"], *case["args"]]


class _DrawTrace:
    """Records every discrete_distribution draw: (random value, cumulative sums, chosen index)."""

    def __init__(self, monkeypatch):
        from llamacpy import rng, sampling

        self.draws = []
        us = []
        orig_u = rng.MT19937.canonical_double
        orig_draw = sampling.discrete_draw

        def canonical(self_rng):
            u = orig_u(self_rng)
            us.append(u)
            return u

        def draw(r, w):
            n_before = len(us)
            i = orig_draw(r, w)
            if len(us) > n_before:
                wd = np.asarray(w, np.float64)
                cp = np.add.accumulate(wd / np.add.accumulate(wd)[-1])
                self.draws.append((us[-1], cp, i))
            return i

        monkeypatch.setattr(rng.MT19937, "canonical_double", canonical)
        monkeypatch.setattr(sampling, "discrete_draw", draw)

    def explain(self) -> str:
        """The draws whose random value came closest to a boundary (a flip needs a gap below ~1e-6)."""
        rows = []
        for k, (u, cp, i) in enumerate(self.draws):
            lo = cp[i - 1] if i > 0 else 0.0
            gap = min(abs(u - lo), abs(cp[i] - u))
            rows.append((gap, k, u, i, cp[i] - lo))
        rows.sort()
        return "; ".join(f"draw {k}: u={u:.9f}, picked candidate {i} (p={p:.3g}), nearest boundary {gap:.2e} away"
                         for gap, k, u, i, p in rows[:3])


@pytest.mark.parametrize("case", CASES, ids=[f"{c['name']}-s{c['seed']}-{c['prompt'][:8].strip()}" for c in CASES])
def test_llama_cli_case(case, capsysbinary, monkeypatch):
    from llamacpy import cli_run

    monkeypatch.chdir(golden_dir())  # --grammar-file paths are relative to the golden folder
    trace = _DrawTrace(monkeypatch)
    assert cli_run.main(_argv(case, threads=1)) == 0
    out, err = capsysbinary.readouterr()
    text, eos = _expected(case)
    got = out.decode("utf-8")
    assert got.endswith("\n")
    assert got[:-1] == text and (EOT.strip() in err.decode()) == eos, (
        f"{case['name']} seed {case['seed']}: expected {text!r} (EOS {eos}), got {got[:-1]!r}; "
        f"closest draws: {trace.explain()}")


def test_golden_file_is_complete():
    assert len(_cases()) == 108 or pytest.skip("no golden sampling.json")
    names = {c["name"] for c in CASES}
    for needed in ("mirostat-1", "mirostat-2", "xtc", "dry", "dynatemp", "top-nsigma", "samplers-order",
                   "sampler-seq", "ignore-eos", "story-schema-sampled", "inline-grammar"):
        assert needed in names


@pytest.mark.parametrize("name", ["pure-dist", "count-schema-sampled"])
def test_case_as_a_subprocess(name):
    """Two cases the way a user runs them: the installed CLI in its own process, stdout bytes compared."""
    case = next(c for c in CASES if c["name"] == name and c["seed"] == 7) if CASES else pytest.skip("no golden data")
    res = subprocess.run([sys.executable, "-m", "llamacpy", "run", *_argv(case)], capture_output=True, timeout=300,
                         cwd=golden_dir())
    assert res.returncode == 0, res.stderr.decode()
    text, eos = _expected(case)
    assert res.stdout.decode("utf-8") == text + "\n"
    assert (b"[end of text]" in res.stderr) == eos


@pytest.fixture(scope="module")
def stories_llama():
    from llamacpy import Llama

    return Llama(str(models_dir() / "stories260K.gguf"), n_ctx=512, verbose=False)


@pytest.mark.parametrize("name, kwargs", [
    ("defaults", {}),
    ("mirostat-2", {"mirostat_mode": 2, "mirostat_tau": 4.0, "mirostat_eta": 0.2}),
    ("typical", {"typical_p": 0.7}),
    ("count-schema-sampled", {"temperature": 1.0, "grammar": "count-json.schema.json"}),
])
def test_api_shares_the_cli_sampler(stories_llama, name, kwargs):
    """Llama.create_completion with llama-cpp-python's keywords prints llama-cli's text for the same seed."""
    from llamacpy.grammar import LlamaGrammar

    case = next(c for c in CASES if c["name"] == name and c["seed"] == 42) if CASES else pytest.skip("no golden")
    if "grammar" in kwargs:
        kwargs = {**kwargs, "grammar": LlamaGrammar.from_json_schema((golden_dir() / "grammars" / kwargs["grammar"])
                                                                     .read_text())}
    r = stories_llama.create_completion(case["prompt"], max_tokens=case["n_predict"], seed=case["seed"], **kwargs)
    text, eos = _expected(case)
    assert " " + case["prompt"] + r["choices"][0]["text"] == text
    assert (r["choices"][0]["finish_reason"] == "stop") == eos


def test_api_logprobs_are_the_chains(stories_llama):
    """logprobs=N reports the chain's probabilities: with top_k 5 every candidate is listed, they sum to 1, and
    the drawn token is among them with its own log probability."""
    r = stories_llama.create_completion("Once upon a time", max_tokens=6, seed=42, logprobs=5, top_k=5)
    lp = r["choices"][0]["logprobs"]
    assert "".join(lp["tokens"]) == r["choices"][0]["text"]
    assert lp["text_offset"] == list(np.cumsum([0] + [len(t) for t in lp["tokens"]])[:-1])
    for tok, logp, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert 1 <= len(top) <= 5 and top[tok] == logp
        assert abs(sum(np.exp(v) for v in top.values()) - 1.0) < 1e-5  # float32 probabilities summed
    greedy = stories_llama.create_completion("Once upon a time", max_tokens=3, temperature=0, logprobs=1)
    assert greedy["choices"][0]["logprobs"]["token_logprobs"] == [0.0, 0.0, 0.0]  # greedy: the chain's p is 1
