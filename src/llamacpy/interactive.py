"""The interactive loop of `llamacpy run -i / -if / -cnv` and `llamacpy chat` (llama.cpp's llama-cli main loop).

Owns: alternating between generation and the person at the terminal -- reverse prompts (`-r`) that hand control
back, end-of-generation tokens in interactive and conversation mode, `--in-prefix` / `--in-suffix` around typed
lines, a trailing `\\` continuing input on the next line, Ctrl-C during generation handing control back (a second
Ctrl-C, or Ctrl-D at the prompt, ends the session and prints the timings), ANSI colours, context shift with the
kept prefix when the window fills (`--no-context-shift` stops instead), and the conversation history that chat
templates format incrementally.

Must not: parse flags (cli_run builds `InteractiveSettings`), do model math or sampling itself
(generation.Session, sampling.Sampler), or know template formats (chat.ChatTemplate).
"""

from __future__ import annotations

import codecs
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

import numpy as np

from .chat import ChatTemplate, ChatTemplateError
from .errors import ContextError
from .generation import Session
from .sampling import Sampler

# llama.cpp's console colours
COLOR_DEFAULT = "\x1b[0m"
COLOR_PROMPT = "\x1b[33m"  # yellow
COLOR_USER = "\x1b[1m\x1b[32m"  # bold green
COLOR_ERROR = "\x1b[31m"  # red


@dataclass
class InteractiveSettings:
    """Everything the loop needs from the command line (already validated by cli_run)."""

    reverse_prompts: list[str] = field(default_factory=list)
    interactive: bool = True  # False: -r only halts generation
    interactive_first: bool = False
    in_prefix: str = ""
    in_suffix: str = ""
    in_prefix_bos: bool = False
    color: bool = False
    n_predict: int = -1
    n_keep: int = 0
    context_shift: bool = True
    display_prompt: bool = True
    ignore_eos: bool = False
    verbose: bool = False
    process_input: Callable[[str], str] = lambda s: s  # escape processing of typed text
    conversation: ChatTemplate | None = None  # set: conversation mode with this template


class InputError(ValueError):
    """Typed input that cannot be used (not UTF-8, too long); reported and the person is asked again."""


class Console:
    """Terminal I/O: bytes out with optional colours, typed lines in (with `\\` continuation)."""

    def __init__(self, out: BinaryIO, inp: BinaryIO, err, color: bool, multiline: bool = False,
                 line_editing: bool | None = None):
        self.out, self.inp, self.err, self.color = out, inp, err, color
        self.multiline = multiline  # -mli: lines continue by default; `/` at the end of a line submits
        self._current = None
        if line_editing is None:  # on a terminal: readline's arrow keys, editing and history across turns
            line_editing = inp is getattr(sys.stdin, "buffer", None) and _isatty(sys.stdin) and _isatty(sys.stdout)
        self.line_editing = line_editing and _enable_readline()
        # With line editing, the input colour is handed to readline as its prompt: readline puts the terminal in
        # raw mode before it prints the prompt, so a key typed once the colour shows (Ctrl-D included) reaches it
        self._pending_color = ""

    def _readline(self) -> bytes:
        """One line of input with its newline, b"" at end of input."""
        if not self.line_editing:
            return self.inp.readline()
        prompt, self._pending_color = self._pending_color, ""
        try:
            # \001 ... \002: readline's markers for the non-printing part of a prompt
            return input(f"\001{prompt}\002" if prompt else "").encode("utf-8", errors="surrogateescape") + b"\n"
        except EOFError:
            return b""
        except UnicodeDecodeError as e:
            raise InputError(f"input is not valid UTF-8 ({e.reason}); it was ignored, please type it again") from None

    def set_color(self, code: str) -> None:
        if self.color and code != self._current:
            self._current = code
            if self.line_editing and code != COLOR_DEFAULT:
                self._pending_color = code  # written by the next write() or as readline's prompt
                return
            self._pending_color = ""
            self.out.write(code.encode())
            self.out.flush()

    def write(self, data: bytes | str) -> None:
        if self._pending_color:
            self.out.write(self._pending_color.encode())
            self._pending_color = ""
        self.out.write(data.encode("utf-8") if isinstance(data, str) else data)
        self.out.flush()

    def message(self, text: str) -> None:
        """A notice for the person (stderr), e.g. why their input was ignored."""
        self.out.flush()
        if self.color:
            print(f"{COLOR_ERROR}{text}{COLOR_DEFAULT}", file=self.err, flush=True)
        else:
            print(text, file=self.err, flush=True)

    def read_input(self) -> str | None:
        """Read what the person types, as llama.cpp's console does: whether input continues on the next line is
        off by default (on with -mli), a line ending with `\\` flips that for itself and a line ending with `/` always submits;
        the marker is dropped, the newline kept. Returns the text with its final newline, or None at end of input
        (Ctrl-D). Raises InputError for bytes that are not UTF-8."""
        buf = b""
        while True:
            line = self._readline()
            if not line:  # EOF
                return None if not buf else self._decode(buf)
            line = line.rstrip(b"\r\n")
            if line.endswith(b"/"):
                return self._decode(buf + line[:-1] + b"\n")
            more = self.multiline
            if line.endswith(b"\\"):
                line = line[:-1]
                more = not more
            buf += line + b"\n"
            if not more:
                return self._decode(buf)

    @staticmethod
    def _decode(data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"input is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                             "it was ignored, please type it again") from None


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _enable_readline() -> bool:
    """Importing readline gives input() line editing and history; absent on some platforms (plain input then)."""
    try:
        import readline  # noqa: F401
    except ImportError:
        return False
    return True


class InteractiveLoop:
    """One interactive session over a `Session`: see the module docstring. `run()` returns the exit code."""

    TAIL_CHARS = 512  # recent text kept for reverse-prompt detection

    def __init__(self, session: Session, sampler: Sampler, tokenizer, settings: InteractiveSettings,
                 console: Console):
        self.session = session
        self.sampler = sampler
        self.tok = tokenizer
        self.s = settings
        self.console = console
        self.tail = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.generating = False
        self.interrupted = False
        self.need_insert_eot = False
        self.chat_msgs: list[dict] = []
        self._assistant = b""  # the reply so far, as bytes: a character may span several tokens
        self.n_shifts = 0
        self.stopped_reason = ""

    @property
    def assistant_text(self) -> str:
        return self._assistant.decode("utf-8", errors="replace")

    @assistant_text.setter
    def assistant_text(self, text: str) -> None:
        self._assistant = text.encode("utf-8")

    # -- signals -----------------------------------------------------------------------------------------------
    def _on_sigint(self, signum, frame) -> None:
        if self.generating and self.s.interactive and not self.interrupted:
            self.interrupted = True  # hand control back after the current token
            return
        raise KeyboardInterrupt

    # -- tokens and text ---------------------------------------------------------------------------------------
    def _tokenize(self, text: str, special: bool, add_bos: bool = False) -> list[int]:
        return list(self.tok.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)) if text else []

    def _remember(self, data: bytes) -> None:
        self.tail = (self.tail + self._decoder.decode(data))[-self.TAIL_CHARS:]

    def _find_reverse_prompt(self) -> str | None:
        pad = 0 if self.s.interactive else 2
        for rp in self.s.reverse_prompts:
            if rp in self.tail[-(len(rp) + pad):]:
                return rp
        return None

    def _display(self, tokens: list[int]) -> None:
        self.console.write(self._text_of(tokens))

    def _text_of(self, tokens: list[int]) -> bytes:
        return b"".join(self.tok.token_to_piece(t, special=False) for t in tokens)

    # -- the cache ---------------------------------------------------------------------------------------------
    def _shift(self) -> None:
        """Context shift: keep the first n_keep cells, drop half of the rest, re-rotate keys (Session.shift)."""
        s = self.session
        n_keep = self.s.n_keep
        kv = s.model.kv
        if self.s.verbose:
            keep_tokens = list(s.tokens[:n_keep])
            k0 = kv.k[:, s.seq_id, :, :n_keep].copy()
            v0 = kv.v[:, s.seq_id, :, :n_keep].copy()
        n_past = len(s.tokens)
        t0 = time.perf_counter()
        n_discard = s.shift(n_keep)
        dt = time.perf_counter() - t0
        self.n_shifts += 1
        if self.s.verbose:
            intact = (s.tokens[:n_keep] == keep_tokens and np.array_equal(kv.k[:, s.seq_id, :, :n_keep], k0)
                      and np.array_equal(kv.v[:, s.seq_id, :, :n_keep], v0))
            print(f"context shift {self.n_shifts}: n_past = {n_past}, n_keep = {n_keep}, n_discard = {n_discard}, "
                  f"kept prefix intact = {'yes' if intact else 'NO'}, {1e3 * dt:.3f} ms", file=self.console.err,
                  flush=True)

    def _evaluate(self, tokens: list[int]) -> np.ndarray | None:
        """Put tokens in the cache, shifting the context first when they would fill it (llama.cpp:
        n_past + n_new >= n_ctx). Returns the last logits, or None when the window is full and shifting is off."""
        s = self.session
        while len(s.tokens) + len(tokens) >= s.n_ctx:
            if not self.s.context_shift:
                self.stopped_reason = "context full and context shift disabled => stopping"
                return None
            self._shift()
        for t in tokens[self._n_accepted:]:  # typed/injected tokens join the penalty history, as in llama.cpp
            self.sampler.accept(t)
        self._n_accepted = 0
        return s.eval(tokens)

    def _room_for_input(self) -> int:
        """The most tokens one input may have: what is left after the kept prefix once everything else is gone."""
        return self.session.n_ctx - self.s.n_keep - 2

    # -- input -------------------------------------------------------------------------------------------------
    def _chat_add(self, role: str, content: str) -> str:
        """Add a message to the conversation; return the text it adds to the prompt."""
        msg = {"role": role, "content": content}
        delta = self.s.conversation.format_single(self.chat_msgs, msg, add_ass=(role == "user"))
        self.chat_msgs.append(msg)
        return delta

    def _user_turn(self) -> list[int] | None:
        """Ask for input until usable; return the tokens to queue ([] = hand control straight back to the
        model), or None when the person ends the session (Ctrl-D)."""
        chat = self.s.conversation is not None
        self.generating = False
        while True:
            if chat:
                self.console.set_color(COLOR_DEFAULT)
                self.console.write("\n> ")
            elif self.s.in_prefix:
                self.console.write(self.s.in_prefix)
            self.console.set_color(COLOR_USER)
            try:
                text = self.console.read_input()
            except InputError as e:
                self.console.set_color(COLOR_DEFAULT)
                self.console.message(str(e))
                continue
            finally:
                self.console.set_color(COLOR_DEFAULT)
            if text is None:
                return None
            if chat:
                text = text[:-1] if text.endswith("\n") else text
                if not text.strip():
                    continue
            elif text == "\n":  # an empty line passes control back to the model
                return []
            try:
                tokens = self._input_tokens(text)
            except InputError as e:
                self.console.message(str(e))
                continue
            if not chat and self.s.in_suffix:
                self.console.write(self.s.in_suffix)
            return tokens

    def _input_tokens(self, text: str) -> list[int]:
        text = self.s.process_input(text)
        if self.s.conversation is not None:
            try:
                formatted = self._chat_add("user", text)
            except ChatTemplateError as e:
                raise InputError(f"{e}; the message was not added") from None
            tokens = self._tokenize(formatted, special=True)
            if self.s.verbose:
                print(f"input: {formatted!r} ({len(tokens)} tokens)", file=self.console.err, flush=True)
        else:
            tokens = (([self.tok.bos_id] if self.s.in_prefix_bos and self.tok.bos_id is not None else [])
                      + self._tokenize(self.s.in_prefix, special=True)
                      + self._tokenize(text, special=False)
                      + self._tokenize(self.s.in_suffix, special=True))
        if len(tokens) > self._room_for_input():
            if self.s.conversation is not None:
                self.chat_msgs.pop()
            raise InputError(f"input is too long ({len(tokens)} tokens; at most {self._room_for_input()} fit the "
                             f"context window of {self.session.n_ctx} with --keep {self.s.n_keep}); it was ignored")
        if self.s.verbose and self.s.conversation is None:
            print(f"input: {text!r} ({len(tokens)} tokens)", file=self.console.err, flush=True)
        if self.need_insert_eot and self.s.conversation is not None:
            eot = self.tok.eot_id if getattr(self.tok, "eot_id", None) is not None else self.tok.eos_id
            if eot is not None:
                tokens = [eot] + tokens
        self.need_insert_eot = False
        return tokens

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self, prompt_tokens: list[int], wait_first: bool = False) -> int:
        """Evaluate the prompt and alternate generation and input. Returns 0, or 130 after a Ctrl-C exit."""
        old = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            return self._run(prompt_tokens, wait_first)
        except KeyboardInterrupt:
            self.console.set_color(COLOR_DEFAULT)
            self.console.write("\n")
            return 130
        finally:
            signal.signal(signal.SIGINT, old)
            self.console.set_color(COLOR_DEFAULT)

    def _run(self, prompt_tokens: list[int], wait_first: bool) -> int:
        s = self.s
        self._n_accepted = 0  # leading tokens of `pending` the sampler has already accepted
        self.session.truncate(0)
        pending = list(prompt_tokens)
        prompt_text = self.tok.detokenize(pending, remove_special=False, unparse_special=False)
        if s.display_prompt and pending:
            self.console.set_color(COLOR_PROMPT)
            self.console.write(prompt_text)
        self._remember(prompt_text)
        is_interacting = s.interactive and (s.interactive_first or wait_first)
        if s.interactive and self._find_reverse_prompt():
            is_interacting = True  # the prompt itself ends with a reverse prompt (the transcript style)
        n_remain = s.n_predict
        logits = None
        self.console.set_color(COLOR_DEFAULT)
        while True:
            self.generating = not is_interacting
            if pending:
                logits = self._evaluate(pending)
                pending = []
                if logits is None:
                    self.console.message("\n" + self.stopped_reason)
                    return 0
            if is_interacting:
                tokens = self._user_turn()
                if tokens is None:
                    self.console.write("\n")
                    return 0
                n_remain -= len(tokens) if s.n_predict >= 0 else 0
                if s.n_predict >= 0 and n_remain <= 0:
                    n_remain = s.n_predict
                pending = tokens
                is_interacting = False
                self.assistant_text = ""
                if not pending and logits is None:
                    is_interacting = True
                continue
            if n_remain == 0:
                if not s.interactive:
                    return 0
                n_remain = s.n_predict
                is_interacting = True
                self._cut_turn()
                continue
            tok = self.session.sample(self.sampler, logits)
            self._n_accepted = 1
            n_remain -= 1
            pending = [tok]
            if not s.ignore_eos and self.tok.is_eog(tok):
                if not s.interactive:
                    self.console.message(" [end of text]")
                    return 0
                self._end_of_turn()
                if s.reverse_prompts and s.conversation is None:
                    rp = self._tokenize(s.reverse_prompts[0], special=True)
                    self._display(rp)
                    pending += rp
                is_interacting = True
                continue
            piece = self.tok.token_to_piece(tok, special=False)
            self.console.write(piece)
            self._remember(piece)
            if s.conversation is not None:
                self._assistant += piece
            if self._find_reverse_prompt():
                if not s.interactive:
                    return 0
                is_interacting = True
                self._cut_turn()
            if self.interrupted:  # Ctrl-C: control back to the person
                self.interrupted = False
                is_interacting = True
                self._cut_turn()

    def _cut_turn(self) -> None:
        """The model's turn ends without its end-of-turn token (Ctrl-C, -n reached, reverse prompt): in
        conversation mode record the reply and close it with EOT before the next message, as llama.cpp does."""
        if self.s.conversation is not None and self.assistant_text:
            self.need_insert_eot = True
        self._end_of_turn()

    def _end_of_turn(self) -> None:
        if self.s.conversation is not None and self.assistant_text:
            self._chat_add("assistant", self.assistant_text)
            self.assistant_text = ""
