"""Vocabularies and special tokens, as llama.cpp's converters write them into GGUF metadata.

Owns: SentencePiece vocab from `tokenizer.model` (HF flavour: overridden by `added_tokens_decoder` of
tokenizer_config.json; Meta flavour: SentencePiece's own scores/types plus added_tokens.json), BPE vocab and
merges from `tokenizer.json` (Llama 3: `tokenizer.ggml.model` "gpt2" + the pre-tokenizer name), the llama2.c
tokenizer `.bin`, and the "special vocab" keys (bos/eos/... ids, add_bos/add_eos flags, merges, chat
template) read from tokenizer.json, tokenizer_config.json and config.json with llama.cpp's precedence.

Must not: tokenize text (that is the runtime tokenizer).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGUFValueType as VT

from ..gguf_writer import KV
from .common import ConvertError

# GGUF token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    pre: str | None = None  # tokenizer.ggml.pre
    merges: list[str] = field(default_factory=list)


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}: invalid JSON ({e})") from None
    except OSError as e:
        raise ConvertError(f"{path}: cannot read ({e.strerror})") from None


# ---------------------------------------------------------------------------------------------- SentencePiece
def _load_spm(path: Path):
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise ConvertError(f"{path}: not a SentencePiece model ({e})") from None
    return sp


def _spm_pieces(sp, n: int) -> tuple[list[str], list[float], list[int]]:
    tokens, scores, types = [], [], []
    for i in range(n):
        tokens.append(sp.IdToPiece(i))
        scores.append(float(sp.GetScore(i)))
        if sp.IsUnknown(i):
            t = UNKNOWN
        elif sp.IsControl(i):
            t = CONTROL
        elif sp.IsUnused(i):
            t = UNUSED
        elif sp.IsByte(i):
            t = BYTE
        else:
            t = NORMAL
        types.append(t)
    return tokens, scores, types


def looks_special(token: str) -> bool:
    """Added tokens that llama.cpp marks CONTROL even when the tokenizer config does not say special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def spm_vocab_hf(model_dir: Path, vocab_size: int | None) -> Vocab:
    """convert_hf_to_gguf.py's SentencePiece vocab: padded to config vocab_size with [PADi], then overridden
    by added_tokens.json and tokenizer_config.json's added_tokens_decoder (score -1000)."""
    sp = _load_spm(model_dir / "tokenizer.model")
    n_sp = sp.vocab_size()
    n = vocab_size if vocab_size is not None else n_sp
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    t, s, ty = _spm_pieces(sp, min(n, n_sp))
    tokens[: len(t)], scores[: len(s)], types[: len(ty)] = t, s, ty
    added = model_dir / "added_tokens.json"
    if added.is_file():
        for text, tid in read_json(added).items():
            if 0 <= tid < n:
                tokens[tid], scores[tid], types[tid] = text, -1000.0, USER_DEFINED
    cfg = model_dir / "tokenizer_config.json"
    if cfg.is_file():
        for tid, data in read_json(cfg).get("added_tokens_decoder", {}).items():
            tid = int(tid)
            if not 0 <= tid < n:
                continue
            text = data["content"]
            if data.get("special") or looks_special(text):
                types[tid] = CONTROL
            else:
                text = text.replace("\u2581", " ")
                types[tid] = USER_DEFINED
            tokens[tid], scores[tid] = text, -1000.0
    return Vocab("llama", tokens, types, scores, pre="default")


def spm_vocab_legacy(tokenizer_path: Path) -> Vocab:
    """convert_legacy_llama.py's SentencePiece vocab: SentencePiece's own pieces, scores and types, then the
    tokens of an added_tokens.json next to tokenizer.model (user-defined, score -1000)."""
    sp = _load_spm(tokenizer_path)
    n_sp = sp.vocab_size()
    tokens, scores, types = _spm_pieces(sp, n_sp)
    added = tokenizer_path.parent / "added_tokens.json"
    if added.is_file():
        items = sorted(read_json(added).items(), key=lambda kv: kv[1])
        expected = list(range(n_sp, n_sp + len(items)))
        if [tid for _, tid in items] != expected:
            raise ConvertError(f"{added}: added token ids must be consecutive from {n_sp}")
        for text, _ in items:
            tokens.append(text)
            scores.append(-1000.0)
            types.append(USER_DEFINED)
    return Vocab("llama", tokens, types, scores)


# ---------------------------------------------------------------------------------------------- BPE (Llama 3)
LLAMA3_PRE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                    r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer_name(tok: dict, path: Path) -> str:
    """Name llama.cpp uses for the pre-tokenizer. llama.cpp recognises it by hashing the output of
    transformers on a fixed text; without transformers we recognise the pre-tokenizer definition itself."""
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    regexes = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    if regexes == [LLAMA3_PRE_REGEX] and byte_level:
        return "llama-bpe"
    if not regexes and len(byte_level) == 1 and byte_level[0].get("use_regex", True):
        return "gpt-2"
    raise ConvertError(f"{path}: BPE pre-tokenizer not recognised (supported: llama-bpe as in Llama 3, gpt-2); "
                       f"pre_tokenizer is {json.dumps(pre)[:200]}")


def bpe_vocab(model_dir: Path, vocab_size: int | None) -> Vocab:
    """convert_hf_to_gguf.py's `_set_vocab_gpt2` from tokenizer.json: tokens by id (holes become [PADi],
    UNUSED), added tokens CONTROL when special or special-looking, else USER_DEFINED; merges as 'a b'."""
    path = model_dir / "tokenizer.json"
    tok = read_json(path)
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise ConvertError(f"{path}: tokenizer model type {model.get('type')!r} is not supported (expected BPE)")
    if model.get("byte_fallback"):
        raise ConvertError(f"{path}: SentencePiece-style BPE with byte fallback needs tokenizer.model, "
                           "which is missing")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {a["content"]: a for a in tok.get("added_tokens", [])}
    for text, a in added.items():
        vocab[text] = int(a["id"])
    if not vocab:
        raise ConvertError(f"{path}: empty vocabulary")
    n = vocab_size if vocab_size is not None else max(vocab.values()) + 1
    if max(vocab.values()) >= n:
        raise ConvertError(f"{path}: token id {max(vocab.values())} does not fit vocab_size {n} of config.json")
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif text in added:
            if added[text].get("special") or looks_special(text):
                types.append(CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types.append(USER_DEFINED)
            tokens.append(text)
        else:
            tokens.append(text)
            types.append(NORMAL)
    return Vocab("gpt2", tokens, types, None, pre=_pre_tokenizer_name(tok, path))


# ---------------------------------------------------------------------------------------------- special vocab
def separate_chat_template(model_dir: Path):
    """Newer checkpoints keep the template beside tokenizer_config.json (gguf-py's SpecialVocab, which uses it
    when tokenizer_config.json has no `chat_template`): chat_template.jinja, plus additional_chat_templates/*.jinja
    as named templates; otherwise chat_template.json's "chat_template"."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        text = _read_text(jinja)
        extra = sorted((model_dir / "additional_chat_templates").glob("*.jinja"))
        if not extra:
            return text
        return [{"name": "default", "template": text}] + [{"name": p.stem, "template": _read_text(p)} for p in extra]
    cj = model_dir / "chat_template.json"
    if cj.is_file():
        data = read_json(cj)
        return data.get("chat_template") if isinstance(data, dict) else None
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConvertError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConvertError(f"{path}: not valid UTF-8 (byte {e.start})") from None


def special_vocab_kvs(model_dir: Path, n_vocab: int, load_merges: bool) -> list[KV]:
    """gguf-py's SpecialVocab: merges, special token ids (tokenizer_config names resolved through
    tokenizer.json's added tokens first, then config.json's *_token_id), add_*_token flags, chat template."""
    merges: list[str] = []
    added_tokens: list[dict] = []
    tj = model_dir / "tokenizer.json"
    if tj.is_file():
        tok = read_json(tj)
        if load_merges:
            raw = (tok.get("model") or {}).get("merges") or []
            if raw and isinstance(raw[0], str):
                merges = list(raw)
            elif raw and isinstance(raw[0], list):  # newer format: pairs; spaces become U+0120 as in GPT-2
                merges = [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                          for pair in raw]
        added_tokens = tok.get("added_tokens", [])
    ids: dict[str, int] = {}
    add_flags: dict[str, bool] = {}
    chat_template = None

    def set_id(typ: str, tid) -> None:
        if isinstance(tid, bool) or not isinstance(tid, int) or typ in ids:
            return
        if tid < 0:
            raise ConvertError(f"invalid {typ} token id {tid}")
        if tid < n_vocab:
            ids[typ] = tid

    tc = model_dir / "tokenizer_config.json"
    if tc.is_file():
        cfg = read_json(tc)
        ct = cfg.get("chat_template", separate_chat_template(model_dir) if cfg else None)
        if isinstance(ct, (str, list)):
            chat_template = ct
        for typ in SPECIAL_TYPES:
            flag = cfg.get(f"add_{typ}_token")
            if isinstance(flag, bool):
                add_flags[typ] = flag
            entry = cfg.get(f"{typ}_token")
            if isinstance(entry, dict):
                entry = entry.get("content")
            if not isinstance(entry, str):
                continue
            set_id(typ, next((a.get("id") for a in added_tokens if a.get("content") == entry), None))
    cj = model_dir / "config.json"
    if cj.is_file():
        cfg = read_json(cj)
        for typ in SPECIAL_TYPES:
            set_id(typ, cfg.get(f"{typ}_token_id"))

    kvs: list[KV] = []
    if merges:
        kvs.append(KV("tokenizer.ggml.merges", merges, VT.ARRAY, VT.STRING))
    key_name = {"sep": "seperator", "pad": "padding", "unk": "unknown", "cls": "cls", "mask": "mask"}
    for typ, tid in ids.items():
        kvs.append(KV(f"tokenizer.ggml.{key_name.get(typ, typ)}_token_id", tid, VT.UINT32))
    for typ, flag in add_flags.items():
        kvs.append(KV(f"tokenizer.ggml.add_{typ}_token", flag, VT.BOOL))
    if isinstance(chat_template, str):
        kvs.append(KV("tokenizer.chat_template", chat_template, VT.STRING))
    elif isinstance(chat_template, list):
        names = []
        for t in chat_template:
            name, text = t.get("name"), t.get("template")
            if not isinstance(name, str) or not isinstance(text, str):
                continue
            name = re.sub(r"[^a-zA-Z0-9_]", "_", name)
            if name == "default":
                kvs.append(KV("tokenizer.chat_template", text, VT.STRING))
            else:
                names.append(name)
                kvs.append(KV(f"tokenizer.chat_template.{name}", text, VT.STRING))
        if names:
            kvs.append(KV("tokenizer.chat_templates", names, VT.ARRAY, VT.STRING))
    return kvs


def vocab_kvs(v: Vocab, *, with_pre: bool = True) -> list[KV]:
    kvs = [KV("tokenizer.ggml.model", v.model, VT.STRING)]
    if with_pre and v.pre is not None:
        kvs.append(KV("tokenizer.ggml.pre", v.pre, VT.STRING))
    kvs.append(KV("tokenizer.ggml.tokens", v.tokens, VT.ARRAY, VT.STRING))
    if v.scores is not None:
        kvs.append(KV("tokenizer.ggml.scores", v.scores, VT.ARRAY, VT.FLOAT32))
    kvs.append(KV("tokenizer.ggml.token_type", v.types, VT.ARRAY, VT.INT32))
    return kvs


# ---------------------------------------------------------------------------------------------- llama2.c
def llama2c_vocab(path: Path, n_vocab: int) -> Vocab:
    """A llama2.c tokenizer .bin: u32 max_token_length, then per token f32 score, i32 length, bytes.
    Types and texts as llama-convert-llama2c-to-ggml assigns them (0 <unk>, 1 <s>, 2 </s> fixed; <0xXX> byte
    tokens; spaces written as U+2581)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConvertError(f"{path}: cannot read tokenizer ({e.strerror})") from None
    pos = 4
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        if pos + 8 > len(data):
            raise ConvertError(f"{path}: truncated llama2.c tokenizer (token {i} of {n_vocab})")
        score, length = struct.unpack_from("<fi", data, pos)
        pos += 8
        if length < 0 or pos + length > len(data):
            raise ConvertError(f"{path}: truncated llama2.c tokenizer (token {i} of {n_vocab})")
        text = data[pos : pos + length].decode("utf-8", errors="replace")
        pos += length
        if i == 0:
            text, t = "<unk>", UNKNOWN
        elif i == 1:
            text, t = "<s>", CONTROL
        elif i == 2:
            text, t = "</s>", CONTROL
        elif not text:
            t = CONTROL
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            t = BYTE
        else:
            t = NORMAL
        tokens.append(text.replace(" ", "\u2581"))
        scores.append(score)
        types.append(t)
    return Vocab("llama", tokens, types, scores)
