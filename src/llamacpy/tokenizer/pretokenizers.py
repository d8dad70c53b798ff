"""BPE pre-tokenizers: which regexes split text into words for each `tokenizer.ggml.pre` value.

Owns: the table from pre-tokenizer names to llama.cpp's regex sequences and per-type flags (ignore_merges,
add_bos default, clean_spaces), and `split_words`, which applies a regex sequence the way llama.cpp's
unicode_regex_split does (each regex further splits the pieces of the previous one; text between matches is
kept as its own piece).
Must not: merge or look up tokens (bpe.py does).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import regex

log = logging.getLogger(__name__)

# llama.cpp's adaptation of Llama 3's `(?i:'s|'t|...)`: case-insensitive without Unicode case folding.
CONTRACTIONS_ANY_CASE = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
LLAMA3_REGEX = (CONTRACTIONS_ANY_CASE + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+")
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
QWEN2_REGEX = (CONTRACTIONS_ANY_CASE + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class PreTokenizer:
    name: str
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a word that is itself a token is emitted whole
    add_bos: bool = False  # llama.cpp's add_bos default for this type (metadata may override)
    clean_spaces: bool = True

    def compiled(self) -> tuple:
        return tuple(_compile(r) for r in self.regexes)


_compiled_cache: dict[str, object] = {}


def _compile(pattern: str):
    if pattern not in _compiled_cache:
        _compiled_cache[pattern] = regex.compile(pattern)
    return _compiled_cache[pattern]


# llama.cpp's LLAMA_VOCAB_PRE_TYPE_DEFAULT (used when tokenizer.ggml.pre is missing or "default")
DEFAULT = PreTokenizer("default", (r"[\p{P}\$\+<=>\^~\|]+", GPT2_REGEX, r"\p{N}+", r"[0-9][0-9][0-9]"))
LLAMA3 = PreTokenizer("llama3", (LLAMA3_REGEX,), ignore_merges=True, add_bos=True)
GPT2 = PreTokenizer("gpt2", (GPT2_REGEX,))
QWEN2 = PreTokenizer("qwen2", (QWEN2_REGEX,), clean_spaces=False)
STARCODER = PreTokenizer("starcoder", (r"\p{N}", GPT2_REGEX))
FALCON = PreTokenizer("falcon", (r"[\p{P}\$\+<=>\^~\|`]+", GPT2_REGEX, r"[0-9][0-9][0-9]"))

PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": DEFAULT,
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"), LLAMA3),
    **dict.fromkeys(("dbrx", "smaug-bpe"), PreTokenizer("llama3-regex", (LLAMA3_REGEX,))),
    **dict.fromkeys(("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "mpt", "olmo",
                     "jais", "exaone4"), GPT2),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), QWEN2),
    "stablelm2": PreTokenizer("stablelm2", (QWEN2_REGEX,)),
    **dict.fromkeys(("starcoder", "refact", "codeshell", "exaone", "minerva-7b"), STARCODER),
    **dict.fromkeys(("command-r", "smollm"), PreTokenizer("starcoder-noclean", STARCODER.regexes, clean_spaces=False)),
    "falcon": FALCON,
}


def pre_tokenizer_for(name: str | None, path: str = "model") -> PreTokenizer:
    """The pre-tokenizer `tokenizer.ggml.pre` names; missing -> llama.cpp's default; unknown -> the default, warned."""
    if name is None or name == "":
        log.warning("%s: missing tokenizer.ggml.pre, using the default pre-tokenizer", path)
        return DEFAULT
    found = PRE_TOKENIZERS.get(name)
    if found is None:
        message = (f"{path}: unknown pre-tokenizer tokenizer.ggml.pre={name!r}; falling back to the default "
                   "pre-tokenizer, tokenization may differ from llama.cpp")
        warnings.warn(message, stacklevel=3)
        log.warning(message)
        return DEFAULT
    return found


def split_words(text: str, compiled_regexes: tuple) -> list[str]:
    """unicode_regex_split: every regex splits each current piece into its matches and the gaps between them."""
    pieces = [text] if text else []
    for pattern in compiled_regexes:
        pieces = [word for piece in pieces for word in _split_one(pattern, piece)]
    return pieces


def _split_one(pattern, piece: str) -> list[str]:
    words = []
    start = 0
    for match in pattern.finditer(piece):
        begin, end = match.span()
        if begin == end:
            continue
        if begin > start:
            words.append(piece[start:begin])
        words.append(piece[begin:end])
        start = end
    if start < len(piece):
        words.append(piece[start:])
    return words
