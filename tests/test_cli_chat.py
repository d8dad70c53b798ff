"""Conversation mode (`llamacpy chat`, `run -cnv`, on by default with a GGUF template), chat templates from a
crafted GGUF (good, raising, unknown filter), `Llama.create_chat_completion`, and bad command-line input."""

from types import SimpleNamespace

import pytest

from chat_fixtures import with_chat_template
from cli_inproc import run_cli
from shared import models_dir

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
RAISES = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
          "{% for m in messages %}{{ m['content'] }}{% endfor %}")
ALWAYS_RAISES = "{{ raise_exception('this template refuses everything') }}"
UNKNOWN_FILTER = "{% for m in messages %}{{ m['content'] | shout }}{% endfor %}"


@pytest.fixture
def run(capsys):
    """`llamacpy ARGS` in-process, stdout/stderr as bytes (as a subprocess would give them)."""
    def _run(*args, stdin: bytes = b""):
        r = run_cli(capsys, *args, stdin=stdin)
        return SimpleNamespace(returncode=r.returncode, stdout=r.stdout.encode(), stderr=r.stderr.encode())
    return _run


@pytest.fixture(scope="module")
def chatml_model(tmp_path_factory):
    return with_chat_template(models_dir() / "stories260K.gguf", tmp_path_factory.mktemp("m") / "chatml.gguf", CHATML)


def _template_model(tmp_path, template):
    return with_chat_template(models_dir() / "stories260K.gguf", tmp_path / "t.gguf", template)


def test_chat_command_formats_turns_with_the_gguf_template(run, chatml_model):
    out = run("chat", "-m", chatml_model, "-sys", "You are Tom.", "-n", 24, "--temp", 0, "-v",
              stdin=b"Hello, Tom.\nTell me a story.\n")
    err = out.stderr.decode()
    assert out.returncode == 0, err
    assert "chat template: jinja" in err
    assert "input: '<|im_start|>user\\nHello, Tom.<|im_end|>\\n<|im_start|>assistant\\n'" in err
    # the second turn follows the model's reply, cut at -n 24: EOS closes it, and the newline the template puts after
    # <|im_end|> is restored before the next message (llama.cpp's common_chat_format_single)
    assert "input: '\\n<|im_start|>user\\nTell me a story.<|im_end|>\\n<|im_start|>assistant\\n'" in err
    assert out.stdout.decode().count("> ") >= 2  # conversation prompt marker
    assert "You are Tom." not in out.stdout.decode()  # the formatted prompt is not echoed in conversation mode
    assert "eval time =" in err


def test_conversation_is_default_with_a_template_and_off_with_no_cnv(run, chatml_model):
    on = run("run", "-m", chatml_model, "-p", "Hello", "-n", 16, "--temp", 0, "-v")
    assert on.returncode == 0, on.stderr.decode()
    assert "chat template: jinja" in on.stderr.decode()
    off = run("run", "-m", chatml_model, "-p", "Once upon a time", "-n", 16, "--temp", 0, "-no-cnv")
    assert off.returncode == 0
    assert off.stdout.decode().lstrip().startswith("Once upon a time")
    assert "chat template" not in off.stderr.decode()


def test_builtin_template_by_name_on_a_model_without_one(run):
    out = run("run", "-m", models_dir() / "stories260K.gguf", "-cnv", "--chat-template", "llama2", "-p", "Hi",
              "-sys", "Be brief.", "-n", 12, "--temp", 0, "-v", stdin=b"More.\n")
    err = out.stderr.decode()
    assert out.returncode == 0, err
    assert "chat template: llama2" in err
    assert "input: '[INST] More. [/INST]'" in err  # the reply was closed (EOS inserted) before it


@pytest.mark.parametrize("template,args,needle", [
    (RAISES, ["-sys", "hi"], "error: chat template raised an exception: System role not supported"),
    (ALWAYS_RAISES, [], "error: chat template raised an exception: this template refuses everything"),
    (UNKNOWN_FILTER, [], "error: chat template does not compile (line 1): No filter named 'shout'"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", [], "error: chat template attempted an unsafe operation"),
])
def test_bad_gguf_templates_give_a_clear_error(run, tmp_path, template, args, needle):
    out = run("chat", "-m", _template_model(tmp_path, template), "-n", 8, *args)
    err = out.stderr.decode()
    assert out.returncode == 1, err
    assert needle in err
    assert "Traceback" not in err


def test_template_error_mid_session_keeps_the_session(run, tmp_path):
    """A template that rejects a later message: the message is refused with a clear line, the chat goes on."""
    strict = ("{% for m in messages %}{% if m['role'] == 'user' and 'forbidden' in m['content'] %}"
              "{{ raise_exception('no forbidden words') }}{% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}assistant:{% endif %}")
    out = run("chat", "-m", _template_model(tmp_path, strict), "-n", 8, "--temp", 0, "-v",
              stdin=b"hello\nsay forbidden\nbye\n")
    err = out.stderr.decode()
    assert out.returncode == 0, err
    assert "no forbidden words; the message was not added" in err
    assert "user: bye" in err


def test_create_chat_completion(chatml_model):
    from llamacpy.api import Llama

    llm = Llama(str(chatml_model), n_ctx=256, verbose=False)
    messages = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "A story, please."}]
    r = llm.create_chat_completion(messages, max_tokens=20, temperature=0)
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    choice = r["choices"][0]
    assert choice["message"]["role"] == "assistant" and len(choice["message"]["content"]) > 0
    assert choice["finish_reason"] in ("stop", "length")
    assert r["usage"]["completion_tokens"] <= 20
    chunks = list(llm.create_chat_completion(messages, max_tokens=20, temperature=0, stream=True))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == choice["message"]["content"]  # same greedy text either way
    r2 = llm.create_chat_completion(messages, max_tokens=8, temperature=0, chat_template="llama2")
    assert r2["object"] == "chat.completion"


def test_create_chat_completion_template_errors(tmp_path):
    from llamacpy.api import Llama
    from llamacpy.chat import ChatTemplateError

    llm = Llama(str(_template_model(tmp_path, RAISES)), n_ctx=128, verbose=False)
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        llm.create_chat_completion([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])
    assert llm.create_chat_completion([{"role": "user", "content": "y"}], max_tokens=4)["object"] == "chat.completion"


def test_chat_template_file(run, tmp_path):
    f = tmp_path / "chatml.jinja"
    f.write_text(CHATML)
    out = run("chat", "-m", models_dir() / "stories260K.gguf", "--chat-template-file", f, "-n", 4, "--temp", 0, "-v",
              stdin=b"Hi\n")
    err = out.stderr.decode()
    assert out.returncode == 0, err
    assert "chat template: jinja" in err
    assert "input: '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'" in err


def test_chat_completion_stops_at_the_template_stop_string(chatml_model, monkeypatch):
    """A model that writes ChatML's end-of-turn as text: the reply ends before `<|im_end|>` (the template's stop
    string), finish_reason "stop". The model's tokens are scripted."""
    from llamacpy.api import Llama

    llm = Llama(str(chatml_model), n_ctx=256, verbose=False)
    script = llm.tokenize(b"Sure, Tom.<|im_end|>\n<|im_start|>user", add_bos=False)
    monkeypatch.setattr("llamacpy.engine.Sampler", lambda *a, **k: ScriptedSampler(script))
    r = llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=len(script) + 5)
    assert r["choices"][0]["message"]["content"] == " Sure, Tom."  # the SPM piece "▁Sure" keeps its space
    assert r["choices"][0]["finish_reason"] == "stop"


def test_reverse_prompt_halts_without_interactive(run):
    out = run("run", "-m", models_dir() / "stories260K.gguf", "-p", "Once upon a time", "-n", 200, "--temp", 0,
              "-r", "Lily")
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    assert text.rstrip("\n").endswith("Lily") and text.count("Lily") == 1


class ScriptedSampler:
    """Stands in for sampling.Sampler in the engine: returns the scripted tokens in order, whatever the logits."""

    def __init__(self, script):
        self._next = iter(script)

    def sample(self, logits):
        return next(self._next)

    def accept(self, token, accept_grammar=None):
        pass

    def token_prob(self, token):
        return 1.0

    def top_probs(self, n):
        return []

