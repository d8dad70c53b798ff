"""Tokenizers built only from GGUF metadata, matching llama.cpp token for token.

Owns: choosing the tokenizer from `tokenizer.ggml.model` ("llama" -> SentencePiece-style, "gpt2" -> byte-level
BPE) and the llama-cpp-python flavour of detokenization.
Must not: read files (callers pass `GGUFFile(path).metadata`).

    tok = load_tokenizer(GGUFFile(path).metadata, path)
    ids = tok.tokenize(b"Hello", add_bos=True, special=False)   # llama_tokenize(add_special, parse_special)
    tok.token_to_piece(ids[-1])                                 # raw bytes, maybe a partial UTF-8 character
    tok.detokenize(ids)                                         # llama_detokenize
"""

from __future__ import annotations

from ..errors import TokenizerError
from .spm import SPMTokenizer
from .vocab import KEY_PREFIX, Tokenizer

# the BPE tokenizer (and the `regex` package its pre-tokenizers need) is imported only for a "gpt2" vocabulary:
# a SentencePiece-style model's start-up does not pay for it
TOKENIZER_CLASSES = {"llama": "spm", "gpt2": "bpe"}

__all__ = ["Tokenizer", "SPMTokenizer", "BPETokenizer", "load_tokenizer", "detokenize_like_llama_cpp_python"]


def load_tokenizer(metadata: dict, path: str = "model") -> Tokenizer:
    key = KEY_PREFIX + "model"
    model = metadata.get(key)
    if model is None:
        raise TokenizerError(f"{path}: missing vocabulary metadata key {key!r}")
    kind = TOKENIZER_CLASSES.get(model) if isinstance(model, str) else None
    if kind is None:
        known = ", ".join(repr(k) for k in TOKENIZER_CLASSES)
        raise TokenizerError(f"{path}: unsupported tokenizer {key}={model!r} (supported: {known})")
    cls = SPMTokenizer if kind == "spm" else __getattr__("BPETokenizer")
    return cls(metadata, path)


def __getattr__(name: str):
    if name == "BPETokenizer":
        from .bpe import BPETokenizer

        return BPETokenizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def detokenize_like_llama_cpp_python(tokenizer: Tokenizer, ids, special: bool = False) -> bytes:
    """llama-cpp-python's `Llama.detokenize(ids, special=special)`: every token's piece (llama_token_to_piece,
    lstrip 0) joined, then one leading space dropped when the first token is BOS. Unlike llama_detokenize it keeps
    the leading space of text without BOS and never cleans spaces."""
    ids = list(ids)
    text = b"".join(tokenizer.token_to_piece(i, special) for i in ids)
    if ids and ids[0] == tokenizer.bos_id and text.startswith(b" "):
        return text[1:]
    return text
