"""`llamacpy run` / `info` driven as a user would: a few real subprocess runs (stdout for text, stderr for timings
and errors, a closed pipe); everything else runs in-process (test_cli_paths.py)."""

import json
import subprocess
import sys

from cli_inproc import run_cli
from shared import golden_dir, models_dir


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


def test_bad_input_in_a_real_process_is_one_line():
    out = run("run", "-m", models_dir() / "stories260K.gguf", "-p", "hi", "-t", 0, timeout=60)
    err = out.stderr.decode()
    assert out.returncode == 1 and err == "error: -t/--threads must be positive, got 0\n"


def test_closed_stdout_pipe_ends_quietly():
    # `llamacpy run ... | head -c 20`: the reader goes away; no traceback, no "Exception ignored" noise
    p = subprocess.Popen([sys.executable, "-m", "llamacpy", "run", "-m", str(models_dir() / "stories260K.gguf"),
                          "-p", "Once upon a time", "-n", "2000", "--temp", "0", "--ignore-eos", "-c", "2048"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(20)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) in (0, 1, 141), err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_llama_cpp_flag_spellings(capsys):
    model = models_dir() / "stories260K.gguf"
    common = ["--n_predict", 8, "--temp", 0, "--repeat_penalty", 1.1, "--repeat_last_n", 32, "--top_k", 40, "-t", 1,
              "-s", 3]
    a = run_cli(capsys, "run", "--model", model, "--prompt", "Once upon a time", *common)
    b = run_cli(capsys, "run", "-m", model, "-p", "Once upon a time", "--no-display-prompt", *common)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == " Once upon a time" + b.stdout and len(b.stdout.strip()) > 0


def test_prompt_file_and_ignore_eos(capsys, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Once upon a time")
    out = run_cli(capsys, "run", "-m", models_dir() / "stories260K.gguf", "-f", f, "-n", 300, "--temp", 0,
                  "--ignore-eos", "-c", 512)
    assert out.returncode == 0, out.stderr
    assert "/   299 runs" in out.stderr


def test_info_lists_metadata_and_tensors(capsys):
    out = run_cli(capsys, "info", models_dir() / "stories260K-Q4_0.gguf")
    assert out.returncode == 0
    assert "llama.embedding_length = 64" in out.stdout and "Q4_0" in out.stdout and \
        "blk.4.ffn_down.weight" in out.stdout
