"""`llamacpy run` / `llamacpy chat`: llama.cpp's llama-cli (flags spelled as llama.cpp spells them).

Owns: the argument parser for generation, interactive and conversation flags; validating them (one clear
`UsageError` line for bad input); prompt loading (-p / -f, escape processing); choosing the mode (plain
generation streamed to stdout, interactive `-i`/`-if`, conversation `-cnv` -- on by default when the model has a
chat template, as in llama.cpp); and printing llama.cpp's timing lines to stderr at exit.
Must not: do model math or sampling itself (generation.Session / sampling.Sampler), run the interactive loop
(interactive.py) or format chats (chat.py).
"""

from __future__ import annotations

import argparse
import codecs
import re
import sys
import time
from typing import TYPE_CHECKING

from .errors import ContextError, LlamacpyError
from .generation import Session, Timings
from .gguf_file import GGUFFile
from .model import LlamaModel
from .model_source import add_model_args, resolve_model
from .sampling import Sampler, SamplingParams
from .tokenizer import load_tokenizer

if TYPE_CHECKING:
    from .chat import ChatTemplate

# imported where they are used, so a plain `run` does not load them: .chat (a chat template is in play),
# .grammar (--grammar / --json-schema given), .interactive (-i / conversation)


class UsageError(LlamacpyError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, as every other bad input
        raise UsageError(f"{self.prog}: {message}")


def _alias(*names: str) -> list[str]:
    """llama.cpp accepts both --foo-bar and --foo_bar for many flags."""
    out = []
    for n in names:
        out.append(n)
        if n.startswith("--") and "-" in n[2:]:
            out.append("--" + n[2:].replace("-", "_"))
    return out


def build_parser(prog: str = "llamacpy run") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Generate text with a GGUF llama model.", allow_abbrev=False)
    add_model_args(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("-p", "--prompt", default=None, help="prompt text")
    src.add_argument(*_alias("-f", "--file"), dest="file", default=None, help="file holding the prompt")
    p.add_argument(*_alias("-n", "--n-predict"), dest="n_predict", type=int, default=-1,
                   help="tokens to generate (-1 = until EOS / forever with context shift, -2 = until the context is full)")
    p.add_argument(*_alias("-c", "--ctx-size"), dest="ctx_size", type=int, default=4096,
                   help="context window (0 = the model's training context)")
    p.add_argument(*_alias("-b", "--batch-size"), dest="batch_size", type=int, default=2048,
                   help="prompt tokens evaluated per forward pass")
    p.add_argument(*_alias("-t", "--threads"), dest="threads", type=int, default=None,
                   help="threads (default: physical cores)")
    p.add_argument(*_alias("--no-display-prompt"), dest="no_display_prompt", action="store_true",
                   help="do not echo the prompt")
    p.add_argument("--keep", type=int, default=0,
                   help="prompt tokens kept when the context shifts (-1 = all; BOS is always kept)")
    p.add_argument(*_alias("--no-context-shift"), dest="no_context_shift", action="store_true",
                   help="stop instead of shifting the context when the window is full")
    p.add_argument(*_alias("--no-escape"), dest="no_escape", action="store_true",
                   help="do not process escape sequences (\\n, \\t, ...) in the prompt")
    p.add_argument(*_alias("--verbose-prompt"), dest="verbose_prompt", action="store_true",
                   help="print the prompt tokens before generating")
    add_sampling_args(p)
    p.add_argument("--no-repack-cache", dest="no_repack_cache", action="store_true",
                   help="repack weights in memory instead of through the disk cache (kernels/repack_cache.py)")
    _interactive_flags(p)
    return p


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """llama-cli's sampler and grammar flags (defaults as in common_params_sampling); `sampling_params` turns
    them into SamplingParams. Shared by run/chat and serve (where they are the requests' defaults)."""
    g = p.add_argument_group("sampling")
    g.add_argument(*_alias("-s", "--seed"), dest="seed", type=int, default=-1, help="RNG seed (-1 = random)")
    g.add_argument("--temp", type=float, default=0.8, help="temperature (<= 0: greedy)")
    g.add_argument(*_alias("--top-k"), dest="top_k", type=int, default=40)
    g.add_argument(*_alias("--top-p"), dest="top_p", type=float, default=0.95)
    g.add_argument(*_alias("--min-p"), dest="min_p", type=float, default=0.05)
    g.add_argument(*_alias("--typical", "--typical-p"), dest="typical_p", type=float, default=1.0)
    g.add_argument(*_alias("--repeat-penalty"), dest="repeat_penalty", type=float, default=1.0)
    g.add_argument(*_alias("--repeat-last-n"), dest="repeat_last_n", type=int, default=64)
    g.add_argument(*_alias("--frequency-penalty"), dest="frequency_penalty", type=float, default=0.0)
    g.add_argument(*_alias("--presence-penalty"), dest="presence_penalty", type=float, default=0.0)
    g.add_argument(*_alias("-l", "--logit-bias"), dest="logit_bias", action="append", default=[],
                   metavar="TOKEN_ID(+/-)BIAS", help="add BIAS to a token's logit, e.g. 15043+1 or 2-inf (repeatable)")
    g.add_argument(*_alias("--ignore-eos"), dest="ignore_eos", action="store_true",
                   help="keep generating past end-of-generation tokens")
    g.add_argument(*_alias("--top-nsigma", "--top-n-sigma"), dest="top_n_sigma", type=float, default=-1.0,
                   help="top-n-sigma: keep logits within N standard deviations of the max (-1 = off)")
    g.add_argument(*_alias("--xtc-probability"), dest="xtc_probability", type=float, default=0.0)
    g.add_argument(*_alias("--xtc-threshold"), dest="xtc_threshold", type=float, default=0.1)
    g.add_argument(*_alias("--dynatemp-range"), dest="dynatemp_range", type=float, default=0.0)
    g.add_argument(*_alias("--dynatemp-exp"), dest="dynatemp_exponent", type=float, default=1.0)
    g.add_argument(*_alias("--dry-multiplier"), dest="dry_multiplier", type=float, default=0.0)
    g.add_argument(*_alias("--dry-base"), dest="dry_base", type=float, default=1.75)
    g.add_argument(*_alias("--dry-allowed-length"), dest="dry_allowed_length", type=int, default=2)
    g.add_argument(*_alias("--dry-penalty-last-n"), dest="dry_penalty_last_n", type=int, default=-1)
    g.add_argument(*_alias("--dry-sequence-breaker"), dest="dry_sequence_breaker", action="append", default=None,
                   metavar="STRING", help="replaces the default breakers (\\n : \" *); 'none' = no breakers")
    g.add_argument("--mirostat", type=int, default=0, help="0 = off, 1 = Mirostat, 2 = Mirostat 2.0")
    g.add_argument(*_alias("--mirostat-lr"), dest="mirostat_eta", type=float, default=0.1)
    g.add_argument(*_alias("--mirostat-ent"), dest="mirostat_tau", type=float, default=5.0)
    g.add_argument("--samplers", dest="sampler_order", action=_Last, const="names", default=None,
                   help="sampler order by name, ';'-separated "
                        "(default penalties;dry;top_k;typ_p;top_p;min_p;xtc;temperature)")
    g.add_argument(*_alias("--sampler-seq", "--sampling-seq"), dest="sampler_order", action=_Last, const="chars",
                   help="sampler order by letter (default edkypmxt)")
    g.add_argument("--grammar", default=None, help="GBNF grammar constraining the generation")
    g.add_argument(*_alias("--grammar-file"), dest="grammar_file", default=None, help="file holding a GBNF grammar")
    g.add_argument("-j", *_alias("--json-schema"), dest="json_schema", default=None,
                   help="JSON schema constraining the generation, e.g. '{}' for any JSON object")
    g.add_argument("-jf", *_alias("--json-schema-file"), dest="json_schema_file", default=None,
                   help="file holding a JSON schema")


class _Last(argparse.Action):
    """--samplers / --sampler-seq share one destination; the last one given wins."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, (self.const, values))


def _interactive_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("interaction")
    g.add_argument("-i", "--interactive", action="store_true", help="run in interactive mode")
    g.add_argument(*_alias("-if", "--interactive-first"), dest="interactive_first", action="store_true",
                   help="interactive mode, waiting for input right away")
    g.add_argument(*_alias("-r", "--reverse-prompt"), dest="reverse_prompt", action="append", default=[],
                   metavar="PROMPT", help="halt generation at PROMPT and hand control back (repeatable)")
    g.add_argument(*_alias("--in-prefix"), dest="in_prefix", default="", help="text put before each input")
    g.add_argument(*_alias("--in-suffix"), dest="in_suffix", default="", help="text put after each input")
    g.add_argument(*_alias("--in-prefix-bos"), dest="in_prefix_bos", action="store_true",
                   help="put a BOS token before each input")
    g.add_argument("--color", action="store_true", help="colour prompt, input and generation (terminals only)")
    g.add_argument(*_alias("-mli", "--multiline-input"), dest="multiline_input", action="store_true",
                   help="input continues over lines until one ends with / (a trailing \\ submits)")
    g.add_argument(*_alias("-cnv", "--conversation"), dest="conversation", action="store_const", const=True,
                   default=None, help="conversation mode (default when the model has a chat template)")
    g.add_argument(*_alias("-no-cnv", "--no-conversation"), dest="conversation", action="store_const",
                   const=False, help="no conversation mode even if the model has a chat template")
    g.add_argument(*_alias("-sys", "--system-prompt"), dest="system_prompt", default=None,
                   help="system message of the conversation")
    g.add_argument(*_alias("--chat-template"), dest="chat_template", default=None,
                   help="built-in template name (llama2, llama3, chatml, mistral-v1, zephyr, vicuna, ...) or Jinja")
    g.add_argument(*_alias("--chat-template-file"), dest="chat_template_file", default=None,
                   help="file holding a Jinja chat template")
    g.add_argument("--jinja", dest="jinja", action="store_true", default=True,
                   help="render the model's template with Jinja (the default)")
    g.add_argument(*_alias("--no-jinja"), dest="jinja", action="store_false",
                   help="map the model's template to the matching built-in instead of rendering it")
    g.add_argument("-v", *_alias("--verbose", "--log-verbose"), dest="verbose", action="store_true",
                   help="log context shifts (and whether the kept prefix stayed intact) to stderr")


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "'": "'", '"': '"', "\\": "\\", "a": "\a", "b": "\b",
            "f": "\f", "v": "\v", "?": "?"}


def process_escapes(text: str) -> str:
    """llama.cpp's string_process_escapes: \\n \\t \\' \\" \\\\ and \\xNN; unknown escapes are kept as is."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
            if nxt == "x" and i + 3 < n + 0 and all(ch in "0123456789abcdefABCDEF" for ch in text[i + 2 : i + 4]):
                out.append(chr(int(text[i + 2 : i + 4], 16)))
                i += 4
                continue
            out.append(c + nxt)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def read_prompt(args) -> str:
    if args.file is not None:
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UsageError(f"cannot read prompt file {args.file!r}: {e.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"prompt file {args.file!r} is not valid UTF-8 (byte {e.start})") from None
        if text.endswith("\n"):  # llama.cpp drops one trailing newline of -f files (so "User:" ends the prompt)
            text = text[:-1]
    else:
        text = args.prompt or ""
    return text if args.no_escape else process_escapes(text)


def parse_logit_bias(items: list[str]) -> dict[int, float]:
    """llama.cpp's `-l TOKEN_ID(+/-)BIAS` values, e.g. "15043+1", "2-inf"."""
    out: dict[int, float] = {}
    for item in items:
        m = re.fullmatch(r"\s*(\d+)\s*([+-])\s*(inf|[0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*", item)
        if not m:
            raise UsageError(f"invalid --logit-bias {item!r} (expected TOKEN_ID(+/-)BIAS, e.g. 15043+1 or 2-inf)")
        out[int(m.group(1))] = float(m.group(2) + m.group(3))
    return out


def sampling_params(args) -> SamplingParams:
    from .sampling import DEFAULT_SAMPLERS, samplers_from_chars, samplers_from_names

    order = list(DEFAULT_SAMPLERS)
    if args.sampler_order is not None:
        kind, text = args.sampler_order
        order = samplers_from_names(text) if kind == "names" else samplers_from_chars(text)
    breakers = ["\n", ":", '"', "*"]
    if args.dry_sequence_breaker is not None:  # the first use drops the defaults; "none" empties the list
        breakers = []
        for b in args.dry_sequence_breaker:
            breakers = [] if b == "none" else breakers + [b]
    if args.mirostat not in (0, 1, 2):
        raise UsageError(f"--mirostat must be 0, 1 or 2, got {args.mirostat}")
    if args.repeat_last_n < -1:
        raise UsageError(f"--repeat-last-n must be >= -1, got {args.repeat_last_n}")
    if args.dry_penalty_last_n < -1:
        raise UsageError(f"--dry-penalty-last-n must be >= -1, got {args.dry_penalty_last_n}")
    return SamplingParams(
        temp=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, typical_p=args.typical_p,
        repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
        frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty, seed=args.seed,
        logit_bias=parse_logit_bias(args.logit_bias),
        xtc_probability=args.xtc_probability, xtc_threshold=args.xtc_threshold,
        dynatemp_range=args.dynatemp_range, dynatemp_exponent=args.dynatemp_exponent,
        dry_multiplier=args.dry_multiplier, dry_base=args.dry_base, dry_allowed_length=args.dry_allowed_length,
        dry_penalty_last_n=args.dry_penalty_last_n, dry_sequence_breakers=breakers,
        mirostat=args.mirostat, mirostat_tau=args.mirostat_tau, mirostat_eta=args.mirostat_eta,
        top_n_sigma=args.top_n_sigma, samplers=order, ignore_eos=args.ignore_eos,
        grammar=_grammar_arg(args),
    )


def _grammar_arg(args) -> str | None:
    schema = _json_schema_arg(args)
    if args.grammar is None and args.grammar_file is None and schema is None:
        return None
    from .grammar import grammar_from_args

    return grammar_from_args(args.grammar, args.grammar_file, schema)


def _json_schema_arg(args) -> str | None:
    if args.json_schema_file is None:
        return args.json_schema
    try:
        with open(args.json_schema_file, "rb") as f:
            return f.read().decode("utf-8")
    except OSError as e:
        raise UsageError(f"cannot read JSON schema file {args.json_schema_file!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"JSON schema file {args.json_schema_file!r} is not valid UTF-8") from None


def make_sampler(args, tokenizer, model) -> Sampler:
    return Sampler(sampling_params(args), tokenizer.n_vocab, vocab=tokenizer, n_ctx=model.n_ctx,
                   n_ctx_train=model.cfg.n_ctx_train)


def load(args, timings: Timings):
    """Open the GGUF, build tokenizer and model; the time spent is llama.cpp's `load time`."""
    t0 = time.perf_counter()
    gguf = GGUFFile(args.model)
    tokenizer = load_tokenizer(gguf.metadata, args.model)
    if args.threads is not None and args.threads <= 0:
        raise UsageError(f"-t/--threads must be positive, got {args.threads}")
    if args.ctx_size < 0:
        raise UsageError(f"-c/--ctx-size must be >= 0, got {args.ctx_size}")
    model = LlamaModel(gguf, n_ctx=args.ctx_size, n_threads=args.threads)
    timings.load_s = time.perf_counter() - t0
    return tokenizer, model


def resolve_keep(n_keep: int, prompt_tokens: list[int], add_bos: bool, n_ctx: int) -> int:
    """llama.cpp: --keep -1 (or more than the prompt) keeps the whole prompt; otherwise BOS is added on top."""
    if n_keep < 0 or n_keep > len(prompt_tokens):
        n_keep = len(prompt_tokens)
    else:
        n_keep += int(add_bos)
    if n_keep >= n_ctx:
        raise UsageError(f"--keep {n_keep} must be smaller than the context size {n_ctx}")
    return n_keep


def validate(args, chat: bool) -> None:
    """Flag checks that need no model: one clear line each."""
    for rp in args.reverse_prompt:
        if rp == "":
            raise UsageError("-r/--reverse-prompt: a reverse prompt must not be empty")
    if args.keep < -1:
        raise UsageError(f"--keep must be -1 (the whole prompt) or >= 0, got {args.keep}")
    if args.ctx_size > 0 and args.keep >= args.ctx_size:
        raise UsageError(f"--keep {args.keep} is larger than the context: it must be smaller than -c {args.ctx_size}")
    if chat and args.conversation is False:
        raise UsageError("`llamacpy chat` is conversation mode: -no-cnv contradicts it (use `llamacpy run`)")
    if args.n_predict < -2:
        raise UsageError(f"-n/--n-predict must be >= -2, got {args.n_predict}")
    sampling_params(args)  # sampler and grammar flags fail here, before the model loads


def chat_template_override(args) -> str | None:
    if args.chat_template_file is not None:
        try:
            with open(args.chat_template_file, "rb") as f:
                return f.read().decode("utf-8")
        except OSError as e:
            raise UsageError(f"cannot read chat template file {args.chat_template_file!r}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"chat template file {args.chat_template_file!r} is not valid UTF-8") from None
    return args.chat_template


def conversation_template(args, chat: bool, metadata: dict, tokenizer) -> ChatTemplate | None:
    """llama.cpp: conversation mode is on by default when a chat template is known (the model's or
    --chat-template); -cnv / `llamacpy chat` force it (chatml when none is known), -no-cnv turns it off."""
    override = chat_template_override(args)
    wanted = True if chat else args.conversation
    has_template = override is not None or isinstance(metadata.get("tokenizer.chat_template"), str)
    if wanted is False or (wanted is None and not has_template):
        return None
    from .chat import template_for_model

    template = template_for_model(metadata, tokenizer, name=override, use_jinja=args.jinja, fallback="chatml")
    template.apply([{"role": "user", "content": "test"}])  # a template that cannot render fails now, clearly
    return template


def main(argv: list[str], chat: bool = False) -> int:
    args = build_parser("llamacpy chat" if chat else "llamacpy run").parse_args(argv)
    validate(args, chat)
    args.model = resolve_model(args)
    if args.no_repack_cache:
        from .kernels import repack_cache
        repack_cache.set_enabled(False)
    timings = Timings()
    prompt = read_prompt(args)
    tokenizer, model = load(args, timings)
    timings.reset()
    n_ctx = model.n_ctx
    if args.keep >= n_ctx:
        raise UsageError(f"--keep {args.keep} is larger than the context: it must be smaller than {n_ctx}")
    template = conversation_template(args, chat, model.gguf.metadata, tokenizer)
    interactive = args.interactive or args.interactive_first or template is not None
    if interactive:
        return run_interactive(args, prompt, tokenizer, model, timings, template)
    return run_plain(args, prompt, tokenizer, model, timings)


def prompt_tokens_for(args, prompt: str, tokenizer, n_ctx: int) -> list[int]:
    tokens = tokenizer.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    if not tokens:
        if tokenizer.bos_id is None:
            raise UsageError("empty prompt and the vocabulary has no BOS token to start from")
        tokens = [tokenizer.bos_id]
    if len(tokens) > n_ctx - 4:
        raise ContextError(f"prompt is too long ({len(tokens)} tokens, max {n_ctx - 4})")
    if args.verbose_prompt:
        print(f"prompt: {prompt!r}\nnumber of tokens in prompt = {len(tokens)}", file=sys.stderr)
        for t in tokens:
            print(f"{t:6d} -> {tokenizer.token_to_piece(t)!r}", file=sys.stderr)
    return tokens


def run_plain(args, prompt: str, tokenizer, model, timings: Timings) -> int:
    """Non-interactive generation: stream the prompt and the generated text; a reverse prompt halts."""
    n_ctx = model.n_ctx
    prompt_tokens = prompt_tokens_for(args, prompt, tokenizer, n_ctx)
    add_bos = bool(prompt_tokens and prompt_tokens[0] == tokenizer.bos_id)
    n_keep = resolve_keep(args.keep, prompt_tokens, add_bos, n_ctx)

    out = sys.stdout.buffer
    if not args.no_display_prompt:
        out.write(tokenizer.detokenize(prompt_tokens, remove_special=False, unparse_special=False))
        out.flush()
    session = Session(model, n_batch=min(args.batch_size, n_ctx), timings=timings)
    sampler = make_sampler(args, tokenizer, model)
    n_predict = args.n_predict
    if n_predict == -2:
        n_predict = n_ctx - len(prompt_tokens)
    is_eog = (lambda t: False) if args.ignore_eos else tokenizer.is_eog
    end_of_text = False
    tail = ""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span several tokens
    try:
        for tok in session.generate(prompt_tokens, sampler, n_predict=n_predict, is_eog=is_eog, n_keep=n_keep,
                                    context_shift=not args.no_context_shift):
            if is_eog(tok):
                end_of_text = True
                break
            piece = tokenizer.token_to_piece(tok, special=False)
            out.write(piece)
            out.flush()
            if args.reverse_prompt:  # llama.cpp: halt at a reverse prompt (searched with 2 chars of slack)
                tail = (tail + decoder.decode(piece))[-256:]
                if any(rp in tail[-(len(rp) + 2):] for rp in args.reverse_prompt):
                    break
    except KeyboardInterrupt:
        print("\n", file=sys.stderr)
    out.write(b"\n")
    out.flush()
    if end_of_text:
        print(" [end of text]", file=sys.stderr)
    print(timings.report(), file=sys.stderr)
    return 0


def run_interactive(args, prompt: str, tokenizer, model, timings: Timings, template: ChatTemplate | None) -> int:
    """-i / -if / conversation mode: the loop lives in interactive.py; this builds its settings."""
    from .interactive import Console, InteractiveLoop, InteractiveSettings

    n_ctx = model.n_ctx
    chat_msgs: list[dict] = []
    wait_first = False
    if template is not None:
        text = ""
        if args.system_prompt:
            sys_msg = {"role": "system", "content": args.system_prompt}
            text += template.format_single(chat_msgs, sys_msg, add_ass=False)
            chat_msgs.append(sys_msg)
        if prompt:
            user_msg = {"role": "user", "content": prompt}
            text += template.format_single(chat_msgs, user_msg, add_ass=True)
            chat_msgs.append(user_msg)
        else:
            wait_first = True
        prompt_tokens = tokenizer.tokenize(text.encode("utf-8"), add_bos=bool(getattr(tokenizer, "add_bos", True)),
                                           special=True) if text else []
        if not prompt_tokens and tokenizer.bos_id is not None:
            prompt_tokens = [tokenizer.bos_id]
        if not prompt_tokens:
            raise UsageError("nothing to start the conversation from: no system prompt and no BOS token")
        if len(prompt_tokens) > n_ctx - 4:
            raise ContextError(f"prompt is too long ({len(prompt_tokens)} tokens, max {n_ctx - 4})")
    else:
        prompt_tokens = prompt_tokens_for(args, prompt, tokenizer, n_ctx)
    add_bos = bool(prompt_tokens and prompt_tokens[0] == tokenizer.bos_id)
    n_keep = resolve_keep(args.keep, prompt_tokens, add_bos, n_ctx)
    settings = InteractiveSettings(
        reverse_prompts=list(args.reverse_prompt),
        interactive=True,
        interactive_first=args.interactive_first,
        in_prefix=args.in_prefix if args.no_escape else process_escapes(args.in_prefix),
        in_suffix=args.in_suffix if args.no_escape else process_escapes(args.in_suffix),
        in_prefix_bos=args.in_prefix_bos,
        color=args.color and sys.stdout.isatty(),
        n_predict=args.n_predict if args.n_predict != -2 else n_ctx,
        n_keep=n_keep,
        context_shift=not args.no_context_shift,
        display_prompt=not args.no_display_prompt and template is None,
        ignore_eos=args.ignore_eos,
        verbose=args.verbose,
        process_input=(lambda t: t) if args.no_escape else process_escapes,
        conversation=template,
    )
    if args.verbose and template is not None:
        print(f"chat template: {template.name}", file=sys.stderr)
    session = Session(model, n_batch=min(args.batch_size, n_ctx), timings=timings)
    sampler = make_sampler(args, tokenizer, model)
    console = Console(sys.stdout.buffer, sys.stdin.buffer, sys.stderr, settings.color, args.multiline_input)
    loop = InteractiveLoop(session, sampler, tokenizer, settings, console)
    loop.chat_msgs = chat_msgs
    rc = loop.run(prompt_tokens, wait_first=wait_first)
    print(timings.report(), file=sys.stderr)
    return rc
