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

# Letters and numbers that the `regex` module knows (Unicode 16+) but llama.cpp's tables (Unicode 15.1) do not:
# llama.cpp treats them as unassigned, so they are excluded from \p{L} / \p{N} below. Computed as
# {regex's \p{L} (or \p{N})} minus {assigned in Python 3.13's unicodedata 15.1}.
LETTERS_NEWER_THAN_15_1 = (
    r"\U0000088F\U00000C5C\U00000CDC\U00001C89-\U00001C8A\U0000A7CB-\U0000A7CF\U0000A7D2\U0000A7D4"
    r"\U0000A7DA-\U0000A7DC\U0000A7F1\U000105C0-\U000105F3\U00010940-\U00010959\U00010D4A-\U00010D65"
    r"\U00010D6F-\U00010D85\U00010EC2-\U00010EC7\U00011380-\U00011389\U0001138B\U0001138E\U00011390-\U000113B5"
    r"\U000113B7\U000113D1\U000113D3\U00011BC0-\U00011BE0\U00011DB0-\U00011DDB\U00013460-\U000143FA"
    r"\U00016100-\U0001611D\U00016D40-\U00016D6C\U00016EA0-\U00016EB8\U00016EBB-\U00016ED3\U00016FF2-\U00016FF3"
    r"\U000187F8-\U000187FF\U00018CFF\U00018D09-\U00018D1E\U00018D80-\U00018DF2\U0001E5D0-\U0001E5ED\U0001E5F0"
    r"\U0001E6C0-\U0001E6DE\U0001E6E0-\U0001E6E2\U0001E6E4-\U0001E6E5\U0001E6E7-\U0001E6ED\U0001E6F0-\U0001E6F4"
    r"\U0001E6FE-\U0001E6FF\U0002B73A-\U0002B73F\U0002CEA2-\U0002CEAD\U000323B0-\U00033479"
)
NUMBERS_NEWER_THAN_15_1 = (
    r"\U00010D40-\U00010D49\U000116D0-\U000116E3\U00011BF0-\U00011BF9\U00011DE0-\U00011DE9\U00016130-\U00016139"
    r"\U00016D70-\U00016D79\U00016FF4-\U00016FF6\U0001CCF0-\U0001CCF9\U0001E5F1-\U0001E5FA"
)
LETTER_CLASS = r"[\p{L}--[" + LETTERS_NEWER_THAN_15_1 + "]]"
NUMBER_CLASS = r"[\p{N}--[" + NUMBERS_NEWER_THAN_15_1 + "]]"

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
    """Compile with \\p{L} / \\p{N} narrowed to llama.cpp's Unicode version (V1 allows the nested set difference)."""
    if pattern not in _compiled_cache:
        narrowed = pattern.replace(r"\p{L}", LETTER_CLASS).replace(r"\p{N}", NUMBER_CLASS)
        _compiled_cache[pattern] = regex.compile(narrowed, regex.V1)
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
