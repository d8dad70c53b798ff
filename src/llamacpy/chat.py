"""Chat templates and chat completion: turning a list of messages into the prompt text a model was trained on.

Owns:
- the built-in templates (llama2 and variants, llama3, chatml, mistral-v1/v3/v3-tekken/v7, zephyr, vicuna,
  vicuna-orca, gemma, phi3, monarch, deepseek, ...), formatted exactly as llama.cpp's `llm_chat_apply_template`;
- detection of a built-in from a template's text (llama.cpp's `llm_chat_detect_template` heuristics);
- rendering a GGUF's `tokenizer.chat_template` (Jinja) in jinja2's `ImmutableSandboxedEnvironment` with the
  Hugging Face globals (`raise_exception`, `strftime_now`, a `tojson` filter); every template failure becomes a
  `ChatTemplateError` -- never arbitrary code execution, never a jinja traceback;
- `format_single`: the incremental text of one new message (llama.cpp's `common_chat_format_single`), used by the
  interactive conversation mode;
- `create_chat_completion`: the OpenAI-shaped chat completion on top of `Llama.create_completion`.

Must not: tokenize or sample by itself (the tokenizer and `Llama` do that), parse command-line flags, print.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Callable, Iterable, Iterator

from .errors import LlamacpyError


class ChatTemplateError(LlamacpyError, ValueError):
    """A chat template is unknown, does not compile, raised an exception, or tried something unsafe."""


Message = tuple[str, str]  # (role, content)


def _trim(s: str) -> str:
    """llama.cpp's trim(): strips C isspace characters from both ends."""
    return s.strip(" \t\n\v\f\r")


def message_text(content) -> str:
    """OpenAI content may be a string, None, or a list of parts ({"type": "text", "text": ...})."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type", "text") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
            else:
                raise ChatTemplateError(f"unsupported message content part: {part!r:.80}")
        return "".join(parts)
    raise ChatTemplateError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def normalize_messages(messages) -> list[dict]:
    """Validate OpenAI-style messages into dicts with str `role` and str `content` (other keys kept for Jinja)."""
    if not isinstance(messages, (list, tuple)):
        raise ChatTemplateError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, (tuple, list)) and len(m) == 2:
            m = {"role": m[0], "content": m[1]}
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ChatTemplateError(f"message {i} must be a dict with a string 'role'")
        d = dict(m)
        d["content"] = message_text(m.get("content"))
        out.append(d)
    return out


# -- built-in templates (llama.cpp's llm_chat_apply_template) -------------------------------------------------

def _chatml(chat: list[Message], add_ass: bool) -> str:
    s = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in chat)
    return s + ("<|im_start|>assistant\n" if add_ass else "")


def _llama2_family(system: bool, bos_inside: bool, strip: bool):
    """llama2 and its variants: [INST] turns, optional <<SYS>> block, optional <s> between turns, optional trim.
    No BOS at the beginning (the tokenizer adds it)."""

    def fmt(chat: list[Message], add_ass: bool) -> str:
        out = ["[INST] "]
        inside = True
        for role, content in chat:
            content = _trim(content) if strip else content
            if not inside:
                inside = True
                out.append("<s>[INST] " if bos_inside else "[INST] ")
            if role == "system":
                out.append(f"<<SYS>>\n{content}\n<</SYS>>\n\n" if system else content + "\n")
            elif role == "user":
                out.append(content + " [/INST]")
            else:
                out.append(content + "</s>")
                inside = False
        return "".join(out)

    return fmt


def _mistral_v1_v3(leading: str, trailing: str, trim_assistant: bool):
    def fmt(chat: list[Message], add_ass: bool) -> str:
        out, inside = [], False
        for role, content in chat:
            if not inside:
                out.append(f"{leading}[INST]{trailing}")
                inside = True
            if role == "system":
                out.append(content + "\n\n")
            elif role == "user":
                out.append(content + leading + "[/INST]")
            else:
                out.append(trailing + (_trim(content) if trim_assistant else content) + "</s>")
                inside = False
        return "".join(out)

    return fmt


def _mistral_v7(space: str):
    def fmt(chat: list[Message], add_ass: bool) -> str:
        out = []
        for role, content in chat:
            if role == "system":
                out.append(f"[SYSTEM_PROMPT]{space}{content}[/SYSTEM_PROMPT]")
            elif role == "user":
                out.append(f"[INST]{space}{content}[/INST]")
            else:
                out.append(f"{space}{content}</s>")
        return "".join(out)

    return fmt


def _llama3(chat: list[Message], add_ass: bool) -> str:
    s = "".join(f"<|start_header_id|>{role}<|end_header_id|>\n\n{_trim(content)}<|eot_id|>" for role, content in chat)
    return s + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_ass else "")


def _zephyr(chat: list[Message], add_ass: bool) -> str:
    s = "".join(f"<|{role}|>\n{content}<|endoftext|>\n" for role, content in chat)
    return s + ("<|assistant|>\n" if add_ass else "")


def _phi3(chat: list[Message], add_ass: bool) -> str:
    s = "".join(f"<|{role}|>\n{content}<|end|>\n" for role, content in chat)
    return s + ("<|assistant|>\n" if add_ass else "")


def _vicuna(orca: bool):
    def fmt(chat: list[Message], add_ass: bool) -> str:
        out = []
        for role, content in chat:
            if role == "system":
                out.append(f"SYSTEM: {content}\n" if orca else f"{content}\n\n")
            elif role == "user":
                out.append(f"USER: {content}\n")
            elif role == "assistant":
                out.append(f"ASSISTANT: {content}</s>\n")
        return "".join(out) + ("ASSISTANT:" if add_ass else "")

    return fmt


def _monarch(chat: list[Message], add_ass: bool) -> str:
    out = [("" if i == 0 else "<s>") + f"{role}\n{content}</s>\n" for i, (role, content) in enumerate(chat)]
    return "".join(out) + ("<s>assistant\n" if add_ass else "")


def _gemma(chat: list[Message], add_ass: bool) -> str:
    out, system = [], ""
    for role, content in chat:
        if role == "system":  # no system role: merged into the next user turn
            system += _trim(content)
            continue
        role = "model" if role == "assistant" else role
        out.append(f"<start_of_turn>{role}\n")
        if system and role != "model":
            out.append(system + "\n\n")
            system = ""
        out.append(_trim(content) + "<end_of_turn>\n")
    return "".join(out) + ("<start_of_turn>model\n" if add_ass else "")


def _deepseek(chat: list[Message], add_ass: bool) -> str:
    out = []
    for role, content in chat:
        if role == "system":
            out.append(content)
        elif role == "user":
            out.append(f"### Instruction:\n{content}\n")
        elif role == "assistant":
            out.append(f"### Response:\n{content}\n<|EOT|>\n")
    return "".join(out) + ("### Response:\n" if add_ass else "")


def _openchat(chat: list[Message], add_ass: bool) -> str:
    out = []
    for role, content in chat:
        if role == "system":
            out.append(content + "<|end_of_turn|>")
        else:
            out.append(f"GPT4 Correct {role[:1].upper()}{role[1:]}: {content}<|end_of_turn|>")
    return "".join(out) + ("GPT4 Correct Assistant:" if add_ass else "")


@dataclass(frozen=True)
class Builtin:
    name: str
    format: Callable[[list[Message], bool], str]
    stop: tuple[str, ...] = ()  # end-of-turn text, for vocabularies that lack it as a special token


BUILTINS: dict[str, Builtin] = {b.name: b for b in [
    Builtin("chatml", _chatml, ("<|im_end|>",)),
    Builtin("llama2", _llama2_family(False, False, False), ("</s>",)),
    Builtin("llama2-sys", _llama2_family(True, False, False), ("</s>",)),
    Builtin("llama2-sys-bos", _llama2_family(True, True, False), ("</s>",)),
    Builtin("llama2-sys-strip", _llama2_family(True, False, True), ("</s>",)),
    Builtin("mistral-v1", _mistral_v1_v3(" ", " ", False), ("</s>",)),
    Builtin("mistral-v3", _mistral_v1_v3("", " ", True), ("</s>",)),
    Builtin("mistral-v3-tekken", _mistral_v1_v3("", "", False), ("</s>",)),
    Builtin("mistral-v7", _mistral_v7(" "), ("</s>",)),
    Builtin("mistral-v7-tekken", _mistral_v7(""), ("</s>",)),
    Builtin("llama3", _llama3, ("<|eot_id|>",)),
    Builtin("zephyr", _zephyr, ("<|endoftext|>",)),
    Builtin("phi3", _phi3, ("<|end|>",)),
    Builtin("vicuna", _vicuna(False), ("</s>",)),
    Builtin("vicuna-orca", _vicuna(True), ("</s>",)),
    Builtin("monarch", _monarch, ("</s>",)),
    Builtin("gemma", _gemma, ("<end_of_turn>",)),
    Builtin("deepseek", _deepseek, ("<|EOT|>",)),
    Builtin("openchat", _openchat, ("<|end_of_turn|>",)),
]}


def detect_template(tmpl: str) -> str | None:
    """The built-in matching a template name or Jinja text, by llama.cpp's heuristics (None if none does).
    As in llama.cpp, a name that is not a built-in ("mistral") goes through the same text heuristics."""
    if tmpl in BUILTINS:
        return tmpl

    def has(s: str) -> bool:
        return s in tmpl

    if has("<|im_start|>"):
        return None if has("<|im_sep|>") or has("<end_of_utterance>") else "chatml"
    if tmpl.startswith("mistral") or has("[INST]"):
        if has("[SYSTEM_PROMPT]"):
            return "mistral-v7"
        if has("' [INST] ' + system_message") or has("[AVAILABLE_TOOLS]"):
            if has(" [INST]"):
                return "mistral-v1"
            if has('"[INST]"'):
                return "mistral-v3-tekken"
            return "mistral-v3"
        if has("content.strip()"):
            return "llama2-sys-strip"
        if has("bos_token + '[INST]"):
            return "llama2-sys-bos"
        if has("<<SYS>>"):
            return "llama2-sys"
        return "llama2"
    if has("<|assistant|>") and has("<|end|>"):
        return "phi3"
    if has("<|assistant|>") and has("<|user|>"):
        return None  # falcon3 / glmedge: not built in here
    if has("<|user|>") and has("<|endoftext|>"):
        return "zephyr"
    if has("bos_token + message['role']"):
        return "monarch"
    if has("<start_of_turn>"):
        return "gemma"
    if has("GPT4 Correct "):
        return "openchat"
    if has("USER: ") and has("ASSISTANT: "):
        return "vicuna-orca" if has("SYSTEM: ") else "vicuna"
    if has("### Instruction:") and has("<|EOT|>"):
        return "deepseek"
    if has("<|start_header_id|>") and has("<|end_header_id|>"):
        return "llama3"
    return None


# -- Jinja (sandboxed) ---------------------------------------------------------------------------------------

class _RaisedByTemplate(Exception):
    pass


def _raise_exception(message="") -> None:
    raise _RaisedByTemplate(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value, indent=None, separators=None, sort_keys=False, ensure_ascii=False):
    return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)


@lru_cache(maxsize=16)
def _compile(source: str):
    """Compile a template once; unknown filters/tests and syntax errors surface here."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template does not compile (line {e.lineno}): {e.message}") from None


def render_jinja(source: str, messages: list[dict], add_generation_prompt: bool, bos_token: str = "",
                 eos_token: str = "", **extra) -> str:
    """Render a Hugging Face-style chat template in the sandbox. Any failure -> ChatTemplateError."""
    import jinja2
    from jinja2.sandbox import SecurityError

    template = _compile(source)
    try:
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                               eos_token=eos_token, **extra)
    except _RaisedByTemplate as e:
        raise ChatTemplateError(f"chat template raised an exception: {e}") from None
    except SecurityError as e:
        raise ChatTemplateError(f"chat template attempted an unsafe operation: {e}") from None
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e.message or e}") from None
    except RecursionError:
        raise ChatTemplateError("chat template failed: recursion too deep") from None
    except Exception as e:  # TypeError/KeyError/... from expressions inside the template
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None


# -- the template object --------------------------------------------------------------------------------------

@dataclass
class ChatTemplate:
    """One way of formatting chats: a built-in (`builtin` set) or a Jinja source (`source` set).
    With `strip_bos`, a Jinja rendering's leading `bos_token` text is removed, because the tokenizer adds BOS
    itself (as llama.cpp does)."""

    builtin: str | None = None
    source: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    strip_bos: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.builtin or "jinja"

    @property
    def stop_strings(self) -> list[str]:
        stops = list(BUILTINS[self.builtin].stop) if self.builtin else []
        if self.source is not None:
            guess = detect_template(self.source)
            stops += list(BUILTINS[guess].stop) if guess else []
        if self.eos_token and self.eos_token not in stops:
            stops.append(self.eos_token)
        return stops

    def apply(self, messages, add_generation_prompt: bool = True) -> str:
        msgs = normalize_messages(messages)
        if self.builtin is not None:
            chat = [(m["role"], m["content"]) for m in msgs]
            return BUILTINS[self.builtin].format(chat, add_generation_prompt)
        text = render_jinja(self.source, msgs, add_generation_prompt, self.bos_token, self.eos_token, **self.extra)
        if self.strip_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token):]
        return text

    def format_single(self, past: list[dict], new: dict, add_ass: bool) -> str:
        """The text that `new` adds after `past` (llama.cpp's common_chat_format_single): the difference between
        formatting past+new and past alone. When past ends with an assistant turn whose formatting ends in a
        newline, that newline was never evaluated (the model stopped at its end-of-turn token), so it is put back
        in front (llama.cpp does this after any past; we only do it where the newline is really missing)."""
        fmt_past = self.apply(past, add_generation_prompt=False) if past else ""
        fmt_new = self.apply(list(past) + [new], add_generation_prompt=add_ass)
        after_model = bool(past) and past[-1].get("role") == "assistant"
        prefix = "\n" if add_ass and after_model and fmt_past.endswith("\n") else ""
        if not fmt_new.startswith(fmt_past):  # a template that rewrites history: fall back to the common prefix
            n = 0
            for a, b in zip(fmt_past, fmt_new):
                if a != b:
                    break
                n += 1
            return prefix + fmt_new[n:]
        return prefix + fmt_new[len(fmt_past):]


def builtin_names() -> list[str]:
    return sorted(BUILTINS)


def template_from_name(name_or_source: str, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
    """--chat-template VALUE: a built-in name, Jinja text, or any name llama.cpp's heuristics map to a built-in."""
    if name_or_source in BUILTINS:
        return ChatTemplate(builtin=name_or_source, bos_token=bos_token, eos_token=eos_token)
    if "{{" in name_or_source or "{%" in name_or_source:
        _compile(name_or_source)
        return ChatTemplate(source=name_or_source, bos_token=bos_token, eos_token=eos_token)
    guess = detect_template(name_or_source)
    if guess is None:
        raise ChatTemplateError(f"unknown chat template {name_or_source!r}; built-ins: {', '.join(builtin_names())}")
    return ChatTemplate(builtin=guess, bos_token=bos_token, eos_token=eos_token)


def _token_text(tokenizer, tid) -> str:
    if tid is None or tid < 0:
        return ""
    try:
        return tokenizer.token_text(tid)
    except Exception:
        return ""


def template_for_model(metadata: dict, tokenizer, name: str | None = None, use_jinja: bool = True,
                       fallback: str | None = "chatml") -> ChatTemplate | None:
    """The template to use for a model: `name` (--chat-template) if given, else the GGUF's
    `tokenizer.chat_template` (rendered as Jinja, or mapped to a built-in with use_jinja=False), else `fallback`
    (llama.cpp falls back to chatml; None -> no template)."""
    bos = _token_text(tokenizer, getattr(tokenizer, "bos_id", None))
    eos = _token_text(tokenizer, getattr(tokenizer, "eos_id", None))
    strip_bos = bool(getattr(tokenizer, "add_bos", True))
    if name:
        t = template_from_name(name, bos, eos)
    else:
        source = metadata.get("tokenizer.chat_template")
        if isinstance(source, str) and source.strip():
            if use_jinja:
                _compile(source)
                t = ChatTemplate(source=source, bos_token=bos, eos_token=eos)
            else:
                guess = detect_template(source)
                if guess is None:
                    raise ChatTemplateError("the model's chat template is not one of the built-ins; "
                                            "use Jinja (the default) or --chat-template NAME")
                t = ChatTemplate(builtin=guess, bos_token=bos, eos_token=eos)
        elif fallback:
            t = ChatTemplate(builtin=fallback, bos_token=bos, eos_token=eos)
        else:
            return None
    t.strip_bos = strip_bos
    return t


# -- chat completion (OpenAI shape) ---------------------------------------------------------------------------

def _completion_to_chat(chunks: Iterable[dict], cid: str, created: int, model: str) -> Iterator[dict]:
    """Map text-completion chunks to chat.completion.chunk dicts: a role delta first, content deltas, then an
    empty delta carrying finish_reason (and usage)."""

    def chunk(delta: dict, finish=None, **extra) -> dict:
        c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        c.update(extra)
        return c

    yield chunk({"role": "assistant"})
    for c in chunks:
        choice = c["choices"][0]
        if choice["text"]:
            yield chunk({"content": choice["text"]})
        if choice["finish_reason"] is not None:
            extra = {"usage": c["usage"]} if "usage" in c else {}
            yield chunk({}, choice["finish_reason"], **extra)


def create_chat_completion(
    llama,
    messages,
    temperature: float = 0.2,
    top_p: float = 0.95,
    top_k: int = 40,
    min_p: float = 0.05,
    typical_p: float = 1.0,
    stream: bool = False,
    stop: str | list[str] | None = None,
    seed: int | None = None,
    max_tokens: int | None = None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    repeat_penalty: float = 1.0,
    logit_bias: dict | None = None,
    chat_template: str | None = None,
    **sampling,
):
    """llama-cpp-python's `Llama.create_chat_completion`: format `messages` with the model's template (or
    `chat_template`, a built-in name or Jinja text), generate, and return a `chat.completion` dict or, with
    stream=True, an iterator of `chat.completion.chunk` dicts."""
    template = template_for_model(llama._gguf.metadata, llama.tokenizer, name=chat_template)
    prompt = template.apply(messages, add_generation_prompt=True)
    tok = llama.tokenizer
    tokens = tok.tokenize(prompt.encode("utf-8"), add_bos=bool(getattr(tok, "add_bos", True)), special=True)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    stops += [s for s in template.stop_strings if s not in stops]
    chunks = llama.create_completion(
        tokens, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        typical_p=typical_p, repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, seed=seed, stop=stops, stream=True, logit_bias=logit_bias, **sampling,
    )
    cid, created = f"chatcmpl-{uuid.uuid4()}", int(time.time())
    it = _completion_to_chat(chunks, cid, created, llama.model_path)
    if stream:
        return it
    content, finish, usage = "", None, None
    for c in it:
        choice = c["choices"][0]
        content += choice["delta"].get("content", "")
        finish = choice["finish_reason"] or finish
        usage = c.get("usage", usage)
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": llama.model_path,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                     "finish_reason": finish}],
        "usage": usage,
    }
