"""`llamacpy bench` and the benchmark helpers, run on the tiny shared model and a tiny random GGUF."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llamacpy import bench
from shared import models_dir

ROOT = Path(__file__).resolve().parent.parent


def test_bench_markdown_and_json(capsys):
    model = models_dir() / "stories260K.gguf"
    assert bench.main(["-m", str(model), "-p", "8", "-n", "4", "-r", "2", "-t", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| model") and "t/s" in out[0] and "GB/s" in out[0]
    rows = [ln for ln in out[2:] if ln.startswith("|")]
    assert len(rows) == 2 and "pp8" in rows[0] and "tg4" in rows[1] and "±" in rows[1]
    assert bench.main(["-m", str(model), "-p", "8", "-n", "4", "-r", "2", "-t", "1", "-o", "json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["test"] for r in recs] == ["pp8", "tg4"]
    assert recs[1]["avg_ts"] > 0 and recs[1]["avg_gbs"] > 0 and len(recs[1]["samples_ns"]) == 2


def test_bench_missing_file_is_a_clear_error(tmp_path):
    from llamacpy.errors import LlamacpyError

    with pytest.raises(LlamacpyError, match="no such file"):
        bench.main(["-m", str(tmp_path / "nope.gguf")])


# F16 in the default run; the quantized ones (~80 s of first-run JIT in the generator process) with -m slow --
# loading Q4_0/Q4_K_M files is covered by the golden tests on tiny-llama-*.gguf
@pytest.mark.parametrize("typ", ["F16"] + [pytest.param(t, marks=pytest.mark.slow) for t in ("Q4_0", "Q4_K_M", "Q3_K")])
def test_random_gguf_loads_and_runs(tmp_path, typ):
    out = tmp_path / f"r-{typ}.gguf"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_random_gguf.py"), str(out), "--type", typ,
                    "--dim", "256", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "512",
                    "--vocab", "600"], check=True, capture_output=True)
    from llamacpy.model import LlamaModel

    m = LlamaModel.load(out, n_ctx=32)
    assert m.n_vocab == 600
    logits = m.forward(np.array([1, 300, 301], np.int32))
    assert logits.shape == (1, 600) and np.isfinite(logits).all()
    toks = m.gguf.metadata["tokenizer.ggml.tokens"]
    assert list(toks[:4]) == ["<unk>", "<s>", "</s>", "<0x00>"] and len(set(toks)) == 600


def _compare_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_llamacpp", ROOT / "benchmarks" / "compare_llamacpp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_script_without_llama_cpp(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    assert _compare_module().main([str(models_dir() / "stories260K.gguf"), "-p", "8", "-n", "4", "-r", "1"]) == 0
    assert capsys.readouterr().out == "llama_cpp (llama-cpp-python) is not installed: nothing to compare against.\n"


@pytest.mark.slow
def test_compare_script_with_llama_cpp(capsys):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (the `oracle` extra)")
    assert _compare_module().main([str(models_dir() / "stories260K.gguf"), "-p", "8", "-n", "4", "-r", "1",
                                   "-t", "1"]) == 0
    out = capsys.readouterr().out
    assert "pp8" in out and "tg4" in out


def test_bench_reports_the_threads_that_run(capsys):
    import numba

    many = numba.config.NUMBA_NUM_THREADS + 7
    assert bench.main(["-m", str(models_dir() / "stories260K.gguf"), "-p", "0", "-n", "2", "-r", "1", "-t",
                       str(many), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["n_threads"] == numba.config.NUMBA_NUM_THREADS
