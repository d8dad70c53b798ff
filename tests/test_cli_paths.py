"""`llamacpy` command-line paths run in-process (cli.main + capsys): every flag error, prompt handling (-b
batches, escapes, -f newline), --no-display-prompt, and the interactive cases llama-cli users hit (EOS bringing
back the reverse prompt, input too long, an empty line, --in-prefix-bos, -mli). Expected text comes from
llama.cpp's greedy story (golden/greedy.json). A few real subprocess runs stay in test_cli.py."""

import json

import pytest

from cli_inproc import run_cli
from shared import golden_dir, models_dir
from tiny_models import write_tiny_llama


def story():
    return models_dir() / "stories260K.gguf"


def golden_case(idx=0):
    cases = [c for c in json.loads((golden_dir() / "greedy.json").read_text())["cases"]
             if c["model"] == "stories260K.gguf"]
    return cases[idx]


def detok(ids):
    from llamacpy.gguf_file import GGUFFile
    from llamacpy.tokenizer import load_tokenizer

    tok = load_tokenizer(GGUFFile(story()).metadata, str(story()))
    return b"".join(tok.token_to_piece(i, special=False) for i in ids).decode()


def one_error_line(r, needle):
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# -- flag and input errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["-t", "0"], "-t/--threads must be positive, got 0"),
    (["-c", "-1"], "-c/--ctx-size must be >= 0, got -1"),
    (["-n", "-3"], "-n/--n-predict must be >= -2, got -3"),
    (["--keep", "-2"], "--keep must be -1 (the whole prompt) or >= 0, got -2"),
    (["-l", "15043*2"], "invalid --logit-bias '15043*2'"),
    (["-n", "x"], "argument -n/--n-predict/--n_predict: invalid int value: 'x'"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["-p", "x", "-f", "y"], "not allowed with argument"),
    (["-p", "x", "-c", 128, "--keep", 200], "error: --keep 200 is larger than the context"),
    (["-p", "x", "-i", "-r", ""], "error: -r/--reverse-prompt: a reverse prompt must not be empty"),
    (["-p", "x", "-cnv", "--chat-template", "nonsense"], "error: unknown chat template 'nonsense'"),
    (["-p", "x", "--chat-template-file", "/nonexistent.jinja"], "error: cannot read chat template file"),
    (["-f", "/nonexistent/prompt.txt"], "error: cannot read prompt file '/nonexistent/prompt.txt'"),
    (["-p", "once upon a time " * 100, "-c", 64], "prompt is too long"),
])
def test_flag_errors_give_one_clear_line(capsys, args, needle):
    one_error_line(run_cli(capsys, "run", "-m", story(), *args), needle)


@pytest.mark.parametrize("setup,needle", [
    ("missing", "no such file"),
    ("not_gguf", "not a GGUF file"),
    ("truncated", "truncated"),
    ("arch", "unsupported architecture 'falcon'"),
    ("type", "unsupported tensor type IQ4_NL"),
    ("key", "missing required key 'llama.block_count'"),
])
def test_bad_model_files_give_one_clear_line(capsys, tmp_path, setup, needle):
    model = {"missing": lambda: tmp_path / "nope.gguf",
             "not_gguf": lambda: (tmp_path / "x.gguf").write_text("hello") and tmp_path / "x.gguf",
             "truncated": lambda: (tmp_path / "t.gguf").write_bytes(story().read_bytes()[:50_000]) and
             tmp_path / "t.gguf",
             "arch": lambda: write_tiny_llama(tmp_path / "f.gguf", arch="falcon"),
             "type": lambda: write_tiny_llama(tmp_path / "iq.gguf", tensor_type_overrides={"blk.0.attn_q.weight": 20}),
             "key": lambda: write_tiny_llama(tmp_path / "k.gguf", drop_keys=("llama.block_count",))}[setup]()
    one_error_line(run_cli(capsys, "run", "-m", model, "-p", "hi", "-n", 4), needle)


def test_prompt_file_not_utf8(capsys, tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"Once upon a \xff time")
    one_error_line(run_cli(capsys, "run", "-m", story(), "-f", f, "-i"), "is not valid UTF-8")


def test_command_level_usage(capsys):
    r = run_cli(capsys, "frobnicate")
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr and "commands:" in r.stderr
    r = run_cli(capsys)
    assert r.returncode == 2 and r.stdout.startswith("usage: llamacpy <command>")
    r = run_cli(capsys, "--help")
    assert r.returncode == 0 and "perplexity" in r.stdout
    from llamacpy import __version__

    r = run_cli(capsys, "--version")
    assert r.returncode == 0 and r.stdout == f"llamacpy {__version__}\n"


# -- prompts -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2, 3, 2048])
def test_prompt_split_over_batches_gives_llama_cpp_story(capsys, batch):
    case = golden_case()
    r = run_cli(capsys, "run", "-m", story(), "-p", case["prompt"], "-n", 16, "--temp", 0, "-b", batch)
    assert r.returncode == 0, r.stderr
    assert r.stdout == " " + case["prompt"] + detok(case["tokens"][:16]) + "\n"


def test_no_display_prompt_prints_only_the_generated_text(capsys):
    case = golden_case()
    r = run_cli(capsys, "run", "-m", story(), "-p", case["prompt"], "-n", 8, "--temp", 0, "--no-display-prompt")
    assert r.returncode == 0, r.stderr
    assert r.stdout == detok(case["tokens"][:8]) + "\n"


def _prompt_seen(capsys, *args):
    r = run_cli(capsys, "run", "-m", story(), "-n", 0, "--verbose-prompt", *args)
    assert r.returncode == 0, r.stderr
    return r.stderr.split("\n", 1)[0]


def test_escape_processing_and_no_escape(capsys):
    assert _prompt_seen(capsys, "-p", r"a\tb\nc\x41\q") == r"prompt: 'a\tb\ncA\\q'"  # unknown \q kept as is
    assert _prompt_seen(capsys, "-p", r"a\tb\n", "--no-escape") == r"prompt: 'a\\tb\\n'"


def test_prompt_file_drops_one_trailing_newline(capsys, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("User:\n")
    assert _prompt_seen(capsys, "-f", f) == "prompt: 'User:'"
    f.write_text("User:\n\n")
    assert _prompt_seen(capsys, "-f", f) == r"prompt: 'User:\n'"
    f.write_text(r"a\tb" + "\n")
    assert _prompt_seen(capsys, "-f", f) == r"prompt: 'a\tb'"  # escapes are processed in files too


# -- interactive ---------------------------------------------------------------------------------------------------
def interactive(capsys, *args, stdin=b""):
    r = run_cli(capsys, "run", "-m", story(), "--temp", 0, "-i", *args, stdin=stdin)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r


def test_eos_brings_back_the_reverse_prompt(capsys):
    # EOS (id 2) forced: llama-cli then prints the first reverse prompt and queues it, and control comes back
    r = interactive(capsys, "-p", "Hello", "-r", "User:", "-l", "2+100", "-n", 8)
    assert r.stdout == " Hello User:\n"


def test_empty_line_hands_control_back_to_the_model(capsys):
    case = golden_case()
    r = interactive(capsys, "-p", case["prompt"], "-n", 8, stdin=b"\n")
    # 8 tokens, control back, an empty line adds nothing: 8 more tokens of the same greedy story
    assert r.stdout == " " + case["prompt"] + detok(case["tokens"][:16]) + "\n"


def test_input_too_long_is_refused_and_asked_again(capsys):
    r = interactive(capsys, "-p", "Hi", "-n", 4, "-c", 64, "-v", stdin=b"once upon a time " * 30 + b"\nbye\n")
    assert "input is too long" in r.stderr and "it was ignored" in r.stderr
    assert "input: 'bye\\n'" in r.stderr


def test_in_prefix_bos_puts_bos_before_each_input(capsys):
    plain = interactive(capsys, "-p", "Hi", "-n", 2, "-v", stdin=b"hello\n")
    bos = interactive(capsys, "-p", "Hi", "-n", 2, "-v", "--in-prefix-bos", stdin=b"hello\n")
    n = lambda err: int(err.split("input: 'hello\\n' (")[1].split(" tokens")[0])  # noqa: E731
    assert n(bos.stderr) == n(plain.stderr) + 1


def test_multiline_input_flag(capsys):
    r = interactive(capsys, "-p", "Hi", "-n", 2, "-v", "-mli", stdin=b"first\nsecond/\n")
    assert "input: 'first\\nsecond\\n'" in r.stderr
    r = interactive(capsys, "-p", "Hi", "-n", 2, "-v", stdin=b"first\nsecond/\n")
    assert "input: 'first\\n'" in r.stderr and "input: 'second\\n'" in r.stderr


def test_context_shifts_keep_the_prefix(capsys):
    r = interactive(capsys, "-p", "Once upon a time", "-c", 64, "--keep", 4, "-n", 150, "--ignore-eos", "-v")
    shifts = [ln for ln in r.stderr.splitlines() if ln.startswith("context shift ")]
    assert len(shifts) >= 3, r.stderr
    assert all("n_keep = 5," in ln and "kept prefix intact = yes" in ln for ln in shifts)  # --keep 4 + BOS
