"""The built-in demo model: shipped as package data, equal to llama.cpp's stories260K, used when -m is omitted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from llamacpy.gguf_file import GGUFFile
from llamacpy.model_source import demo_model_path
from shared import golden_dir, models_dir


def test_demo_model_is_package_data_with_licence():
    path = Path(demo_model_path())
    assert path.is_file() and path.stat().st_size < 2_000_000
    licence = (path.parent / "LICENSE-llama2.c").read_text()
    assert "MIT License" in licence and "Copyright (c) 2023 Andrej" in licence


def test_demo_model_tensors_equal_llamacpp_stories260k():
    ours, ref = GGUFFile(demo_model_path()), GGUFFile(models_dir() / "stories260K.gguf")
    assert list(ours.tensors) == list(ref.tensors)
    for name, t in ref.tensors.items():
        o = ours.tensors[name]
        assert (o.ggml_type, o.shape) == (t.ggml_type, t.shape), name
        assert np.array_equal(ours.tensor_bytes(name), ref.tensor_bytes(name)), name
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        assert list(np.asarray(ours.metadata[key])) == list(np.asarray(ref.metadata[key])), key


def test_run_without_model_uses_demo_and_says_so():
    case = json.loads((golden_dir() / "greedy.json").read_text())["cases"][0]
    assert case["model"] == "stories260K.gguf" and case["prompt"] == "Once upon a time"
    cmd = [sys.executable, "-m", "llamacpy", "run", "-p", "Once upon a time", "-n", "48", "--temp", "0"]
    out = subprocess.run(cmd, capture_output=True, timeout=300)
    err = out.stderr.decode()
    assert out.returncode == 0, err
    assert out.stdout.decode() == " Once upon a time" + case["text"] + "\n"
    assert "built-in demo model" in err and "stories260K" in err and "-m FILE.gguf" in err
    assert "eval time =" in err


def test_compile_notice_only_when_compiling(tmp_path):
    """A cold numba cache prints the one compile line; the next run, served from the cache, does not."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    cmd = [sys.executable, "-m", "llamacpy", "run", "-p", "Once", "-n", "2", "--temp", "0"]
    lines = []
    for _ in range(2):
        out = subprocess.run(cmd, capture_output=True, timeout=300, env=env)
        assert out.returncode == 0, out.stderr.decode()
        lines.append([ln for ln in out.stderr.decode().splitlines() if "compiling kernels for this CPU, once" in ln])
    assert len(lines[0]) == 1 and str(tmp_path / "numba") in lines[0][0]
    assert lines[1] == []


def test_numba_cache_is_keyed_on_the_cpu(tmp_path):
    """The kernels' on-disk cache may sit on a shared disk: an entry written for one CPU must not load on
    another. numba's index key holds the CPU name and features (caching.py `_index_key` -> `magic_tuple()`);
    here the same function and cache directory, compiled for a 'generic' CPU and then for this host, miss both
    times, and the generic CPU's second run hits its own entry."""
    (tmp_path / "kmod.py").write_text("import numba\n@numba.njit(cache=True)\ndef f(x):\n    return x + 1\n")
    code = ("import kmod; kmod.f(1); s = kmod.f.stats; print(sum(s.cache_hits.values()), "
            "sum(s.cache_misses.values()))")

    def hits_misses(cpu):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(tmp_path))
        env.pop("NUMBA_CPU_NAME", None)
        if cpu:
            env["NUMBA_CPU_NAME"] = cpu
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr.decode()
        return tuple(int(v) for v in out.stdout.split())

    assert hits_misses("generic") == (0, 1)
    assert hits_misses(None) == (0, 1)  # another CPU: not loaded from the generic entry
    assert hits_misses("generic") == (1, 0)  # both entries live side by side in the one index
