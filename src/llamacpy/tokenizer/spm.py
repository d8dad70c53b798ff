"""SentencePiece-style tokenizer (`tokenizer.ggml.model == "llama"`), as llama.cpp's llm_tokenizer_spm does it.

Owns: the leading-space rule (a space before the first text fragment and after every special token, spaces
escaped to U+2581), the score-ordered bigram merge over UTF-8 characters, byte fallback to `<0xNN>` tokens,
and SPM pieces (U+2581 back to a space).
Must not: handle special-token partitioning, BOS/EOS or detokenization rules (vocab.py owns those).
"""

from __future__ import annotations

import heapq

from ..errors import TokenizerError
from .vocab import Tokenizer, token_bytes

ESCAPED_SPACE = "\u2581"
ESCAPED_SPACE_BYTES = ESCAPED_SPACE.encode("utf-8")


def utf8_char_length(lead_byte: int) -> int:
    """llama.cpp's unicode_len_utf8: the length its lead byte announces (1 for stray continuation bytes)."""
    return (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[lead_byte >> 4]


def split_utf8_chars(text: bytes) -> list[int]:
    """Start offsets of the characters of `text` (a truncated last character keeps what is there)."""
    starts = []
    offset, n = 0, len(text)
    while offset < n:
        starts.append(offset)
        offset += utf8_char_length(text[offset])
    return starts


class SPMTokenizer(Tokenizer):
    default_special_ids = {"bos_id": 1, "eos_id": 2, "unk_id": 0}
    default_add_bos = True
    default_add_eos = False
    default_add_space_prefix = True
    clean_spaces = False

    def __init__(self, metadata: dict, path: str = "model"):
        super().__init__(metadata, path)
        if self.scores is None:
            self.scores_list = [0.0] * self.n_vocab
        else:
            self.scores_list = self.scores.astype(float).tolist()
        self.bytes_to_id = {token_bytes(text): i for text, i in self.text_to_id.items()}
        self._byte_tokens: dict[int, int] = {}

    # -- tokenization ---------------------------------------------------------------------------------------
    def _tokenize_fragments(self, fragments: list, output: list[int]) -> None:
        prev_is_special = True  # the first fragment gets the space prefix, like text after a special token
        for fragment in fragments:
            if isinstance(fragment, int):
                output.append(fragment)
                prev_is_special = True
                continue
            text = b" " + fragment if self.add_space_prefix and prev_is_special else fragment
            self._tokenize_text(text.replace(b" ", ESCAPED_SPACE_BYTES), output)
            prev_is_special = False

    def _tokenize_text(self, text: bytes, output: list[int]) -> None:
        """Merge adjacent symbols, best-scoring vocab bigram first (leftmost on ties), until nothing merges."""
        starts = split_utf8_chars(text)
        n_symbols = len(starts)
        if n_symbols == 0:
            return
        lengths = [b - a for a, b in zip(starts, starts[1:] + [len(text)])]
        prev = list(range(-1, n_symbols - 1))
        next_ = list(range(1, n_symbols + 1))
        next_[-1] = -1
        queue: list[tuple[float, int, int, int]] = []
        for i in range(1, n_symbols):
            self._push_bigram(text, starts, lengths, i - 1, i, queue)
        while queue:
            _, left, right, size = heapq.heappop(queue)
            if lengths[left] == 0 or lengths[right] == 0 or lengths[left] + lengths[right] != size:
                continue  # a symbol of this bigram has changed since it was queued
            lengths[left] += lengths[right]
            lengths[right] = 0
            next_[left] = next_[right]
            if next_[right] >= 0:
                prev[next_[right]] = left
            if prev[left] >= 0:
                self._push_bigram(text, starts, lengths, prev[left], left, queue)
            if next_[left] >= 0:
                self._push_bigram(text, starts, lengths, left, next_[left], queue)
        i = 0
        while i != -1:
            self._emit_symbol(text[starts[i]:starts[i] + lengths[i]], output)
            i = next_[i]

    def _push_bigram(self, text: bytes, starts, lengths, left: int, right: int, queue) -> None:
        size = lengths[left] + lengths[right]
        token_id = self.bytes_to_id.get(text[starts[left]:starts[left] + size])
        if token_id is not None:
            heapq.heappush(queue, (-self.scores_list[token_id], left, right, size))

    def _emit_symbol(self, symbol: bytes, output: list[int]) -> None:
        token_id = self.bytes_to_id.get(symbol)
        if token_id is not None:
            output.append(token_id)
            return
        output.extend(self.byte_token(b) for b in symbol)

    def byte_token(self, byte: int) -> int:
        """llama.cpp's byte_to_token for SPM: `<0xNN>`, else the one-byte text, else (our choice) UNK."""
        token_id = self._byte_tokens.get(byte)
        if token_id is None:
            token_id = self.text_to_id.get(f"<0x{byte:02X}>")
            if token_id is None:
                token_id = self.bytes_to_id.get(bytes([byte]), self.unk_id)
            if token_id is None:
                raise TokenizerError(f"{self.path}: vocabulary has no token for byte 0x{byte:02X} and no UNK token")
            self._byte_tokens[byte] = token_id
        return token_id

    # -- pieces ---------------------------------------------------------------------------------------------
    def _normal_piece(self, text: str) -> bytes:
        return token_bytes(text.replace(ESCAPED_SPACE, " "))
