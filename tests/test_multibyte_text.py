"""Characters spread over several tokens (byte-fallback pieces in SPM, byte-level BPE): the conversation history
and reverse-prompt matching must see whole characters, on both vocabularies (stories260K's 512-token SPM and the
Llama-3 BPE vocab). The model's choices are scripted, so the text is exactly what a reply would contain."""

import io
import sys

import numpy as np
import pytest

from llamacpy.chat import template_from_name
from llamacpy.gguf_file import GGUFFile
from llamacpy.interactive import Console, InteractiveLoop, InteractiveSettings
from llamacpy.tokenizer import load_tokenizer
from shared import golden_dir, models_dir

TEXTS = ["我们一起去龘鱻吧", "llama 🦙 emoji 🔥", "古池や蛙飛び込む"]  # each splits a character on both vocabularies


@pytest.fixture(scope="module", params=["spm", "bpe"])
def tokenizer(request):
    path = models_dir() / "stories260K.gguf" if request.param == "spm" else \
        golden_dir() / "tokenizer" / "ggml-vocab-llama-bpe.gguf"
    return load_tokenizer(GGUFFile(path).metadata, str(path))


class ScriptedSession:
    """Stands in for generation.Session: eval() records, sample() returns the scripted tokens in order."""

    def __init__(self, script, n_ctx=4096):
        self.script, self.tokens, self.n_ctx, self.seq_id = list(script), [], n_ctx, 0

    def truncate(self, n):
        del self.tokens[n:]

    def eval(self, tokens, all_logits=False):
        self.tokens += list(tokens)
        return np.zeros((1, 8), np.float32)

    def sample(self, sampler, logits):
        return self.script.pop(0)


class NullSampler:
    def accept(self, tok):
        pass


def run_loop(tokenizer, script, stdin: bytes, **settings):
    out = io.BytesIO()
    console = Console(out, io.BytesIO(stdin), io.StringIO(), color=False, line_editing=False)
    loop = InteractiveLoop(ScriptedSession(script), NullSampler(), tokenizer, InteractiveSettings(**settings),
                           console)
    assert loop.run(tokenizer.tokenize(b"Hi", add_bos=True, special=False)) == 0
    return loop, out.getvalue()


@pytest.mark.parametrize("text", TEXTS)
def test_reply_split_over_tokens_reaches_the_history_intact(tokenizer, text):
    reply = tokenizer.tokenize(text.encode(), add_bos=False, special=False)
    pieces = [tokenizer.token_to_piece(t, special=False) for t in reply]
    assert any(_partial(p) for p in pieces), "the case must split a character over tokens"
    template = template_from_name("chatml")
    loop, out = run_loop(tokenizer, reply + [tokenizer.eos_id] * 2, b"next\n", conversation=template,
                         display_prompt=False)
    assert loop.chat_msgs[0] == {"role": "assistant", "content": text.removeprefix(" ")} or \
        loop.chat_msgs[0]["content"].strip() == text
    assert "\ufffd" not in "".join(m["content"] for m in loop.chat_msgs)
    assert text.encode() in out


@pytest.mark.parametrize("text", TEXTS)
def test_non_ascii_reverse_prompt_matches(tokenizer, text):
    word = text.split()[-1]  # e.g. "🔥" or "日本語"
    generated = tokenizer.tokenize(f"Once {text}".encode(), add_bos=False, special=False)
    loop, out = run_loop(tokenizer, generated + [tokenizer.eos_id] * 4, b"", reverse_prompts=[word],
                         interactive=False)
    assert out.rstrip().endswith(word.encode())  # halted right after the reverse prompt


def _partial(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


@pytest.mark.parametrize("text", TEXTS)
def test_plain_run_halts_at_a_non_ascii_reverse_prompt(capsys, monkeypatch, text):
    """`llamacpy run -r WORD` (no -i) on stories260K's SPM vocab, the model's tokens scripted."""
    from cli_inproc import run_cli
    from llamacpy import cli_run

    path = models_dir() / "stories260K.gguf"
    tok = load_tokenizer(GGUFFile(path).metadata, str(path))
    word = text.split()[-1]
    script = tok.tokenize(f" {text} and more text".encode(), add_bos=False, special=False)
    monkeypatch.setattr(cli_run.Session, "generate", lambda self, *a, **k: iter(script))
    r = run_cli(capsys, "run", "-m", path, "-p", "Hi", "-n", 50, "-r", word, "--no-display-prompt")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n").endswith(word) and "more text" not in r.stdout
