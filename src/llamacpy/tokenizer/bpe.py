"""Byte-level BPE tokenizer (`tokenizer.ggml.model == "gpt2"`: Llama 3 and GPT-2-style vocabularies).

Owns: GPT-2's byte <-> character encoding, merge ranks from `tokenizer.ggml.merges` (a dict keyed by the merge
string "left right", built in one pass), the rank-ordered merge of each pre-tokenized word as
llm_tokenizer_bpe_session does it (with Llama 3's ignore_merges shortcut), a per-word result cache, and BPE
pieces (byte-decoding of token texts).
Must not: choose regexes (pretokenizers.py) or handle special tokens, BOS/EOS and detokenization (vocab.py).
"""

from __future__ import annotations

import heapq

from ..errors import TokenizerError
from .pretokenizers import pre_tokenizer_for, split_words
from .vocab import KEY_PREFIX, Tokenizer, token_bytes

WORD_CACHE_LIMIT = 200_000


def byte_to_char_table() -> list[str]:
    """GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the rest map to U+0100 onwards."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = [""] * 256
    extra = 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = byte_to_char_table()
CHAR_TO_BYTE = {ch: byte for byte, ch in enumerate(BYTE_TO_CHAR)}
LATIN1_TO_ENCODED = str.maketrans({byte: ch for byte, ch in enumerate(BYTE_TO_CHAR)})


def byte_encode(word: str) -> str:
    """The word's UTF-8 bytes, one encoded character per byte (llama.cpp's unicode_byte_encoding_process)."""
    return word.encode("utf-8", "surrogatepass").decode("latin-1").translate(LATIN1_TO_ENCODED)


def decode_utf8_like_llama_cpp(raw: bytes) -> str:
    """llama.cpp's unicode_cpts_from_utf8: valid UTF-8 as usual; otherwise every byte that does not start a
    well-formed sequence becomes one U+FFFD (overlong forms and surrogates are accepted, as there)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _decode_lenient(raw)


def _decode_lenient(raw: bytes) -> str:
    chars = []
    i, n = 0, len(raw)
    while i < n:
        lead = raw[i]
        length = 1 if lead < 0x80 else 0 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else \
            4 if lead < 0xF8 else 0
        if length == 0 or i + length > n or any(b & 0xC0 != 0x80 for b in raw[i + 1:i + length]):
            chars.append("\ufffd")
            i += 1
            continue
        codepoint = lead & (0x7F, 0x1F, 0x0F, 0x07)[length - 1]
        for b in raw[i + 1:i + length]:
            codepoint = (codepoint << 6) | (b & 0x3F)
        chars.append(chr(codepoint) if codepoint <= 0x10FFFF else "\ufffd")
        i += length
    return "".join(chars)


def byte_decode(text: str) -> bytes:
    """llama_decode_text: each character back to its byte; unknown characters as llama.cpp spells them."""
    out = bytearray()
    for ch in text:
        byte = CHAR_TO_BYTE.get(ch)
        if byte is not None:
            out.append(byte)
        else:  # a raw non-UTF-8 byte of the token text (U+DC80..U+DCFF) decodes as U+FFFD in llama.cpp
            utf8 = "\ufffd".encode() if "\udc80" <= ch <= "\udcff" else ch.encode("utf-8", "surrogatepass")
            out += b"[UNK_BYTE_0x" + utf8.hex().encode() + token_bytes(text) + b"]"
    return bytes(out)


def merge_ranks(merges, path: str) -> dict[str, int]:
    """rank of each merge "left right" (the first occurrence wins, as with llama.cpp's emplace)."""
    if not isinstance(merges, (list, tuple)):
        raise TokenizerError(f"{path}: {KEY_PREFIX}merges must be an array of strings")
    n = len(merges)
    return dict(zip(reversed(merges), range(n - 1, -1, -1)))


class BPETokenizer(Tokenizer):
    default_special_ids = {"bos_id": 11, "eos_id": 11}
    default_add_bos = False
    default_add_eos = False
    default_add_space_prefix = False

    def __init__(self, metadata: dict, path: str = "model"):
        self.pre_name = metadata.get(KEY_PREFIX + "pre")
        self.pre = pre_tokenizer_for(self.pre_name, path)
        self.default_add_bos = self.pre.add_bos
        self.clean_spaces = self.pre.clean_spaces
        super().__init__(metadata, path)
        merges_key = KEY_PREFIX + "merges"
        if merges_key not in metadata:
            raise TokenizerError(f"{path}: BPE vocabulary without {merges_key}")
        self.ranks = merge_ranks(metadata[merges_key], path)
        self.n_merges = len(self.ranks)
        self._regexes = self.pre.compiled()
        self._word_cache: dict[str, tuple[int, ...]] = {}

    # -- tokenization ---------------------------------------------------------------------------------------
    def _tokenize_fragments(self, fragments: list, output: list[int]) -> None:
        for fragment in fragments:
            if isinstance(fragment, int):
                output.append(fragment)
            else:
                self._tokenize_text(decode_utf8_like_llama_cpp(fragment), output)

    def _tokenize_text(self, text: str, output: list[int]) -> None:
        cache = self._word_cache
        for word in split_words(text, self._regexes):
            ids = cache.get(word)
            if ids is None:
                if len(cache) >= WORD_CACHE_LIMIT:
                    cache.clear()
                ids = cache[word] = tuple(self._tokenize_word(byte_encode(word)))
            output.extend(ids)

    def _tokenize_word(self, word: str) -> list[int]:
        if self.pre.ignore_merges:
            token_id = self.text_to_id.get(word)
            if token_id is not None:
                return [token_id]
        return self._symbols_to_ids(self._merge(word))

    def _merge(self, word: str) -> list[str]:
        """Merge adjacent symbols, lowest merge rank first (leftmost on ties), as the bigram queue does."""
        symbols = list(word)
        n = len(symbols)
        if n < 2:
            return symbols
        next_ = list(range(1, n + 1))
        next_[-1] = -1
        prev = list(range(-1, n - 1))
        queue: list[tuple[int, int, int, str]] = []
        for i in range(1, n):
            self._push_bigram(symbols, i - 1, i, queue)
        while queue:
            _, left, right, text = heapq.heappop(queue)
            if not symbols[left] or not symbols[right] or symbols[left] + symbols[right] != text:
                continue  # outdated bigram
            symbols[left] = text
            symbols[right] = ""
            next_[left] = next_[right]
            if next_[right] >= 0:
                prev[next_[right]] = left
            if prev[left] >= 0:
                self._push_bigram(symbols, prev[left], left, queue)
            if next_[left] >= 0:
                self._push_bigram(symbols, left, next_[left], queue)
        return [s for s in symbols if s]

    def _push_bigram(self, symbols: list[str], left: int, right: int, queue) -> None:
        rank = self.ranks.get(symbols[left] + " " + symbols[right])
        if rank is not None:
            heapq.heappush(queue, (rank, left, right, symbols[left] + symbols[right]))

    def _symbols_to_ids(self, symbols: list[str]) -> list[int]:
        ids = []
        for symbol in symbols:
            token_id = self.text_to_id.get(symbol)
            if token_id is not None:
                ids.append(token_id)
                continue
            # llama.cpp looks up each single byte of the symbol's UTF-8 text; only ASCII ones can be tokens
            for byte in symbol.encode("utf-8"):
                byte_id = self.text_to_id.get(chr(byte)) if byte < 0x80 else None
                if byte_id is not None:
                    ids.append(byte_id)
        return ids

    # -- pieces ---------------------------------------------------------------------------------------------
    def _normal_piece(self, text: str) -> bytes:
        return byte_decode(text)
