"""The vocabulary shared by every tokenizer: what llama.cpp's `llama_vocab::load` derives from GGUF metadata.

Owns: reading `tokenizer.ggml.*` keys (tokens, scores, token types, special-token ids, add_bos/add_eos,
add_space_prefix), token attributes, the end-of-generation set, the special-token partition of raw text
(`tokenizer_st_partition`), `token_to_piece` and `detokenize` (llama_detokenize semantics, including the
leading-space removal and BPE's clean-up of spaces), and the `Tokenizer` base class that SPM and BPE extend.
Must not: segment text into tokens (spm.py, bpe.py do that) or read files (it gets the metadata dict).
"""

from __future__ import annotations

import numpy as np

from ..errors import TokenizerError

# llama_token_type (GGUF `tokenizer.ggml.token_type`) -> llama_token_attr bit flags, as llama.cpp maps them.
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

_ATTR_OF_TOKEN_TYPE = np.array(
    [ATTR_UNDEFINED, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED, ATTR_UNUSED, ATTR_BYTE],
    dtype=np.int32,
)
ATTR_HIDDEN_UNLESS_SPECIAL = ATTR_UNKNOWN | ATTR_CONTROL  # pieces that are empty unless special=True
ATTR_VERBATIM = ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED  # pieces that are the raw vocab text

KEY_PREFIX = "tokenizer.ggml."

# (key suffix, attribute name) of the special-token ids llama.cpp reads, in its order.
SPECIAL_ID_KEYS = (
    ("bos_token_id", "bos_id"),
    ("eos_token_id", "eos_id"),
    ("eot_token_id", "eot_id"),
    ("eom_token_id", "eom_id"),
    ("unknown_token_id", "unk_id"),
    ("seperator_token_id", "sep_id"),
    ("padding_token_id", "pad_id"),
    ("mask_token_id", "mask_id"),
    ("fim_pre_token_id", "fim_pre_id"),
    ("fim_suf_token_id", "fim_suf_id"),
    ("fim_mid_token_id", "fim_mid_id"),
    ("fim_pad_token_id", "fim_pad_id"),
    ("fim_rep_token_id", "fim_rep_id"),
    ("fim_sep_token_id", "fim_sep_id"),
    ("prefix_token_id", "fim_pre_id"),  # deprecated spellings
    ("suffix_token_id", "fim_suf_id"),
    ("middle_token_id", "fim_mid_id"),
)

# Texts by which llama.cpp recognises special tokens the metadata does not name (first listed wins here;
# llama.cpp takes whichever its hash map yields first). Each found token is forced to CONTROL.
AUTO_DETECTED_TEXTS = {
    "eot_id": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
               "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"),
    "eom_id": ("<|eom_id|>",),
    "fim_pre_id": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                   "<|code_prefix|>", "<|prefix|>"),
    "fim_suf_id": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                   "<|code_suffix|>", "<|suffix|>"),
    "fim_mid_id": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                   "<|code_middle|>", "<|middle|>"),
    "fim_pad_id": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep_id": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep_id": ("<|file_sep|>",),
}

# Token texts that end generation (llama.cpp's list; each is forced to CONTROL).
EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
)
ALWAYS_RENDERED_TEXTS = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss: USER_DEFINED

C_ISSPACE = frozenset(b" \t\n\v\f\r")


def token_bytes(text: str) -> bytes:
    """A token text back to the bytes the GGUF holds. Token texts are bytes to llama.cpp and need not be UTF-8:
    the GGUF reader decodes them with surrogateescape, which this undoes (a stray byte 0xE9 is U+DCE9)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that did not come from a raw byte (e.g. from JSON)
        return text.encode("utf-8", "surrogatepass")


def _byte_of(text: str) -> int | None:
    """The byte a BYTE token `<0xNN>` stands for, or None when its text is not of that form."""
    if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
        try:
            return int(text[3:5], 16)
        except ValueError:
            return None
    return None


def require_key(metadata: dict, key: str, path: str):
    if key not in metadata:
        raise TokenizerError(f"{path}: missing vocabulary metadata key {key!r}")
    return metadata[key]


def read_token_texts(metadata: dict, path: str) -> list[str]:
    key = KEY_PREFIX + "tokens"
    tokens = require_key(metadata, key, path)
    if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
        raise TokenizerError(f"{path}: {key} must be an array of strings, got {type(tokens).__name__}")
    if len(tokens) == 0:
        raise TokenizerError(f"{path}: {key} is empty")
    # llama.cpp renames empty tokens so that every text maps back to its id
    return [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]


def read_per_token_array(metadata: dict, suffix: str, n_tokens: int, path: str, dtype) -> np.ndarray | None:
    key = KEY_PREFIX + suffix
    if key not in metadata:
        return None
    values = metadata[key]
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # an out-of-range float score is inf, as in a C cast
            array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise TokenizerError(f"{path}: {key} is not a numeric array ({e})") from None
    if array.ndim != 1 or len(array) < n_tokens:
        raise TokenizerError(f"{path}: {key} has {array.size} entries for {n_tokens} tokens")
    return array[:n_tokens]


def token_attributes(token_types: np.ndarray | None, n_tokens: int) -> np.ndarray:
    """llama.cpp's per-token attributes: NORMAL without token types, else the type's flag (UNDEFINED if odd)."""
    if token_types is None:
        return np.full(n_tokens, ATTR_NORMAL, dtype=np.int32)
    types = token_types.astype(np.int64)
    known = (types >= 0) & (types < len(_ATTR_OF_TOKEN_TYPE))
    return np.where(known, _ATTR_OF_TOKEN_TYPE[np.clip(types, 0, len(_ATTR_OF_TOKEN_TYPE) - 1)], ATTR_UNDEFINED)


def read_bool(metadata: dict, suffix: str, default: bool, path: str = "model") -> bool:
    value = metadata.get(KEY_PREFIX + suffix)
    if value is None:
        return default
    if isinstance(value, (bool, int, np.integer, np.bool_)):
        return bool(value)
    raise TokenizerError(f"{path}: {KEY_PREFIX + suffix} must be a boolean, got {value!r:.40}")


class Tokenizer:
    """A llama.cpp vocabulary: subclasses add `_tokenize_fragment`, `_normal_piece` and the defaults below."""

    default_special_ids: dict[str, int | None] = {}
    default_add_bos = True
    default_add_eos = False
    default_add_space_prefix = False
    clean_spaces = False

    def __init__(self, metadata: dict, path: str = "model"):
        self.path = path
        self.model_name = metadata.get(KEY_PREFIX + "model")
        self.texts = read_token_texts(metadata, path)
        self.n_vocab = len(self.texts)
        self.scores = read_per_token_array(metadata, "scores", self.n_vocab, path, np.float32)
        types = read_per_token_array(metadata, "token_type", self.n_vocab, path, np.int32)
        self.attrs = token_attributes(types, self.n_vocab)
        self.text_to_id: dict[str, int] = dict(zip(self.texts, range(self.n_vocab)))  # last duplicate wins (b4748)
        self.add_space_prefix = read_bool(metadata, "add_space_prefix", self.default_add_space_prefix, path)
        self._read_special_ids(metadata)
        self.add_bos = read_bool(metadata, "add_bos_token", self.default_add_bos, path)
        self.add_eos = read_bool(metadata, "add_eos_token", self.default_add_eos, path)
        self._check_add_special("add_bos_token", self.add_bos, self.bos_id, "bos_token_id")
        self._check_add_special("add_eos_token", self.add_eos, self.eos_id, "eos_token_id")
        self._auto_detect_special_ids()
        self.eog_ids = self._end_of_generation_ids()
        self._mark_always_rendered()
        self.special_token_ids = self._special_tokens_longest_first()
        self._pieces: dict[tuple[int, bool], bytes] = {}

    # -- loading ----------------------------------------------------------------------------------------
    def _read_special_ids(self, metadata: dict) -> None:
        for _, attr in SPECIAL_ID_KEYS:
            default = self.default_special_ids.get(attr)
            setattr(self, attr, default if default is not None and default < self.n_vocab else None)
        for suffix, attr in SPECIAL_ID_KEYS:
            value = metadata.get(KEY_PREFIX + suffix)
            if value is None:
                continue
            try:
                new_id = int(value)
            except (TypeError, ValueError):
                raise TokenizerError(f"{self.path}: {KEY_PREFIX + suffix} is not an integer: {value!r}") from None
            if 0 <= new_id < self.n_vocab:  # out of range (e.g. 0xFFFFFFFF for "none"): keep the default
                setattr(self, attr, new_id)

    def _check_add_special(self, add_key: str, add: bool, token_id: int | None, id_key: str) -> None:
        if add and token_id is None:
            raise TokenizerError(f"{self.path}: {KEY_PREFIX + add_key} is true, but {KEY_PREFIX + id_key} is not set")

    def _force_control(self, token_id: int) -> None:
        self.attrs[token_id] |= ATTR_CONTROL

    def _auto_detect_special_ids(self) -> None:
        for attr, candidates in AUTO_DETECTED_TEXTS.items():
            if getattr(self, attr) is not None:
                continue
            for text in candidates:
                token_id = self.text_to_id.get(text)
                if token_id is not None:
                    setattr(self, attr, token_id)
                    self._force_control(token_id)
                    break

    def _end_of_generation_ids(self) -> frozenset[int]:
        eog = {i for i in (self.fim_pad_id, self.fim_rep_id, self.fim_sep_id) if i is not None}
        for text in EOG_TEXTS:
            token_id = self.text_to_id.get(text)
            if token_id is not None:
                eog.add(token_id)
                self._force_control(token_id)
        eog.update(i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None)
        texts = {self.texts[i]: i for i in eog}
        has_call = "<|call|>" in texts or "<|calls|>" in texts
        if "<|end|>" in texts and has_call and ("<|return|>" in texts or "<|flush|>" in texts):
            end_id = texts["<|end|>"]  # o200k_harmony / solar-open: <|end|> separates messages, it does not stop
            eog.discard(end_id)
            self.attrs[end_id] = ATTR_USER_DEFINED
        if "<|tool_response>" in texts and "</s>" in texts:
            eog.discard(texts["</s>"])  # gemma4: </s> is ordinary text there
            self.attrs[texts["</s>"]] = ATTR_NORMAL
        return frozenset(eog)

    def _mark_always_rendered(self) -> None:
        for text in ALWAYS_RENDERED_TEXTS:
            token_id = self.text_to_id.get(text)
            if token_id is not None:
                self.attrs[token_id] = ATTR_USER_DEFINED

    def _special_tokens_longest_first(self) -> list[int]:
        special = np.nonzero(self.attrs & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))[0].tolist()
        special.sort(key=lambda i: -len(token_bytes(self.texts[i])))
        return special

    # -- public API ---------------------------------------------------------------------------------------
    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids

    def token_text(self, token_id: int) -> str:
        return self.texts[token_id]

    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        """llama_tokenize(text, add_special=add_bos, parse_special=special)."""
        raw = token_bytes(text) if isinstance(text, str) else bytes(text)
        fragments = self.partition_special(raw, special) if raw else []
        output: list[int] = []
        if add_bos and self.add_bos:
            output.append(self.bos_id)
        self._tokenize_fragments(fragments, output)
        if add_bos and self.add_eos:
            output.append(self.eos_id)
        return output

    def token_to_piece(self, token_id: int, special: bool = True) -> bytes:
        """llama_token_to_piece (lstrip 0): the bytes one token contributes; may be part of a UTF-8 character."""
        key = (token_id, special)
        piece = self._pieces.get(key)
        if piece is None:
            if not 0 <= token_id < self.n_vocab:
                raise IndexError(f"token id {token_id} out of range [0, {self.n_vocab})")
            piece = self._pieces[key] = self._compute_piece(token_id, special)
        return piece

    def detokenize(self, ids: list[int], remove_special: bool = False, unparse_special: bool = False) -> bytes:
        """llama_detokenize: pieces joined; the first piece loses one leading space when the vocab adds a space
        prefix (unless a removed BOS came first); with remove_special a leading BOS / trailing EOS that the vocab
        adds is dropped; BPE vocabs with clean_spaces then tidy " ," " 's" and the like."""
        ids = list(ids)
        remove_space = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        pieces = []
        for token_id in ids:
            piece = self.token_to_piece(token_id, unparse_special)
            if remove_space and piece.startswith(b" "):
                piece = piece[1:]
            remove_space = False
            pieces.append(piece)
        text = b"".join(pieces)
        return clean_up_spaces(text) if self.clean_spaces else text

    # -- pieces -------------------------------------------------------------------------------------------
    def _compute_piece(self, token_id: int, special: bool) -> bytes:
        attr = int(self.attrs[token_id])
        if not special and attr & ATTR_HIDDEN_UNLESS_SPECIAL:
            return b""
        text = self.texts[token_id]
        if attr & ATTR_VERBATIM:
            return token_bytes(text)
        if attr & ATTR_NORMAL:
            return self._normal_piece(text)
        if attr & ATTR_BYTE:
            byte = _byte_of(text)  # a BYTE token whose text is not <0xNN> (a damaged file): its own text
            return bytes([byte]) if byte is not None else token_bytes(text)
        return b""  # UNUSED / UNDEFINED tokens contribute nothing

    def _normal_piece(self, text: str) -> bytes:
        raise NotImplementedError

    # -- special-token partition ---------------------------------------------------------------------------
    def partition_special(self, raw: bytes, parse_special: bool) -> list:
        """tokenizer_st_partition: split raw text at special-token texts, longest token first. Returns a list of
        token ids (int) and raw text pieces (bytes). Control/unknown tokens are matched only with parse_special;
        user-defined tokens always."""
        fragments: list = [raw]
        for token_id in self.special_token_ids:
            attr = int(self.attrs[token_id])
            if not parse_special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            needle = token_bytes(self.texts[token_id])
            if not any(isinstance(f, bytes) and needle in f for f in fragments):
                continue
            fragments = [piece for f in fragments for piece in self._split_fragment(f, needle, token_id, attr)]
        return fragments

    @staticmethod
    def _split_fragment(fragment, needle: bytes, token_id: int, attr: int) -> list:
        if not isinstance(fragment, bytes) or needle not in fragment:
            return [fragment]
        pieces: list = []
        start, end = 0, len(fragment)
        while True:
            match = fragment.find(needle, start, end)
            if match < 0:
                if start < end:
                    pieces.append(fragment[start:end])
                return pieces
            left_end = match
            if attr & ATTR_LSTRIP:
                while left_end > start and fragment[left_end - 1] in C_ISSPACE:
                    left_end -= 1
            if left_end > start:
                pieces.append(fragment[start:left_end])
            pieces.append(token_id)
            start = match + len(needle)
            if attr & ATTR_RSTRIP:
                while start < end and fragment[start] in C_ISSPACE:
                    start += 1

    def _tokenize_fragments(self, fragments: list, output: list[int]) -> None:
        raise NotImplementedError


def clean_up_spaces(text: bytes) -> bytes:
    """llama.cpp's clean_spaces passes: drop the space in " ?", " !", " .", " ,"; turn " ' " into "'";
    drop the space before the contractions 's 'm 're 've."""
    text = _drop_space_before_punctuation(text)
    text = _join_lone_apostrophes(text)
    return _drop_space_before_contractions(text)


def _drop_space_before_punctuation(text: bytes) -> bytes:
    out = bytearray(text[:1])
    for i in range(1, len(text)):
        if text[i - 1] == 0x20 and text[i] in b"?!.,":
            out.pop()
        out.append(text[i])
    return bytes(out)


def _join_lone_apostrophes(text: bytes) -> bytes:
    buf = bytearray(text)
    out = bytearray(buf[:1])
    i = 1
    while i < len(buf):
        x = buf[i]
        if x == 0x27 and i + 1 < len(buf) and buf[i - 1] == 0x20 and buf[i + 1] == 0x20:
            out.pop()  # the space before
            i += 1
            buf[i] = 0  # the space after is skipped (llama.cpp blanks it so it cannot start another match)
        out.append(x)
        i += 1
    return bytes(out)


def _drop_space_before_contractions(text: bytes) -> bytes:
    out = bytearray(text[:1])
    n = len(text)
    for i in range(1, n):
        x = text[i]
        if text[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = text[i + 1]
            if x1 in b"sm":
                out.pop()
            elif x1 not in b"td" and i + 2 < n and (text[i + 1:i + 3] in (b"re", b"ve")):
                out.pop()
        out.append(x)
    return bytes(out)
