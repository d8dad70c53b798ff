"""`llamacpy run` / `info` driven as a user would: a subprocess, stdout for text, stderr for timings and errors."""

import json
import subprocess
import sys

import pytest

from shared import golden_dir, models_dir
from tiny_models import write_tiny_llama


def run(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "llamacpy", *map(str, args)], capture_output=True, timeout=timeout)


def test_greedy_story_and_timings():
    case = json.loads((golden_dir() / "greedy.json").read_text())["cases"][0]
    assert case["model"] == "stories260K.gguf"
    out = run("run", "-m", models_dir() / "stories260K.gguf", "-p", "Once upon a time", "-n", 48, "--temp", 0)
    assert out.returncode == 0, out.stderr.decode()
    # like llama-cli, the SPM prompt is echoed token by token: its first piece "▁Once" prints as " Once"
    assert out.stdout.decode() == " Once upon a time" + case["text"] + "\n"
    err = out.stderr.decode()
    for label in ("load time =", "prompt eval time =", "eval time =", "total time =", "ms per token",
                  "tokens per second"):
        assert label in err
    assert "/     5 tokens" in err and "/    47 runs" in err


def test_llama_cpp_flag_spellings_and_no_display_prompt():
    out = run("run", "--model", models_dir() / "stories260K.gguf", "--prompt", "Once upon a time", "--n_predict", 8,
              "--temp", 0, "--repeat_penalty", 1.1, "--repeat_last_n", 32, "--top_k", 40, "--no-display-prompt",
              "-t", 1, "-s", 3)
    assert out.returncode == 0, out.stderr.decode()
    assert not out.stdout.decode().startswith("Once upon a time")
    assert len(out.stdout.decode().strip()) > 0


def test_prompt_file_and_ignore_eos(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Once upon a time")
    out = run("run", "-m", models_dir() / "stories260K.gguf", "-f", f, "-n", 300, "--temp", 0, "--ignore-eos",
              "-c", 512)
    assert out.returncode == 0, out.stderr.decode()
    assert "/   299 runs" in out.stderr.decode()


def test_info_lists_metadata_and_tensors():
    out = run("info", models_dir() / "stories260K-Q4_0.gguf")
    assert out.returncode == 0
    text = out.stdout.decode()
    assert "llama.embedding_length = 64" in text and "Q4_0" in text and "blk.4.ffn_down.weight" in text


@pytest.mark.parametrize("setup,needle", [
    ("missing", "no such file"),
    ("not_gguf", "not a GGUF file"),
    ("truncated", "truncated"),
    ("arch", "unsupported architecture 'falcon'"),
    ("type", "unsupported tensor type IQ4_NL"),
    ("key", "missing required key 'llama.block_count'"),
    ("long_prompt", "prompt is too long"),
    ("missing_prompt_file", "cannot read prompt file"),
    ("bad_flag", "unrecognized arguments"),
])
def test_bad_input_gives_one_clear_line(tmp_path, setup, needle):
    model = models_dir() / "stories260K.gguf"
    extra = ["-p", "hi"]
    if setup == "missing":
        model = tmp_path / "nope.gguf"
    elif setup == "not_gguf":
        model = tmp_path / "x.gguf"
        model.write_text("hello")
    elif setup == "truncated":
        model = tmp_path / "t.gguf"
        model.write_bytes((models_dir() / "stories260K.gguf").read_bytes()[:50_000])
    elif setup == "arch":
        model = write_tiny_llama(tmp_path / "f.gguf", arch="falcon")
    elif setup == "type":
        model = write_tiny_llama(tmp_path / "iq.gguf", tensor_type_overrides={"blk.0.attn_q.weight": 20})
    elif setup == "key":
        model = write_tiny_llama(tmp_path / "k.gguf", drop_keys=("llama.block_count",))
    elif setup == "long_prompt":
        extra = ["-p", "once upon a time " * 100, "-c", 64]
    elif setup == "missing_prompt_file":
        extra = ["-f", tmp_path / "none.txt"]
    elif setup == "bad_flag":
        extra = ["--frobnicate"]
    out = run("run", "-m", model, *extra, "-n", 4, timeout=60)
    err = out.stderr.decode()
    assert out.returncode != 0
    assert needle in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
