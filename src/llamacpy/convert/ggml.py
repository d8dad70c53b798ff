"""Legacy GGML-family llama files (2023: `ggml-model-f16.bin`, `ggml-model-q4_0.bin`, ...) -> GGUF.

Owns: reading the GGML (magic 'lmgg', no version), GGMF v1 ('fmgg') and GGJT v1-v3 ('tjgg') containers --
7 uint32 hyperparameters (n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype), the vocabulary (length-
prefixed bytes, each with a float32 score except in GGML), then tensors (n_dims, name_len, type, dims in ggml
order, name, data; GGJT aligns the data to 32 bytes) -- checking every size against the file before using it;
and the metadata llama.cpp's convert_llama_ggml_to_gguf.py writes for them (its defaults: context 2048,
eps 5e-6, n_head_kv = n_head / --gqa; token 0/1/2 renamed <unk>/<s>/</s>, 1-byte tokens 3..258 written as
<0xXX> byte tokens, empty ones as control tokens, spaces as U+2581). Tensor shapes are written as element
shapes (llama.cpp's script hands them to a gguf-py that expects byte shapes: its F32 output loses columns and
it refuses quantized files; we do what it means to do).
Types: F32/F16 from every version; quantized tensors from GGJT v3 (today's block layouts), and Q5_0/Q5_1 from
GGJT v2 as llama.cpp allows; the older quantizations had other block layouts and are refused by name.
Must not: write files (it returns the plan: metadata + lazy tensor specs).
"""

from __future__ import annotations

import mmap
import re
import struct
from pathlib import Path

import numpy as np
from gguf import GGUFValueType as VT

from ..gguf_file import GGML_TYPES
from ..gguf_writer import KV, TensorSpec
from .common import ConvertError

MAGICS = {b"lmgg": "GGML", b"fmgg": "GGMF", b"tjgg": "GGJT"}

FTYPE_NAMES = {0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 4: "MOSTLY_Q4_1_SOME_F16",
               7: "MOSTLY_Q8_0", 8: "MOSTLY_Q5_0", 9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S",
               12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L", 14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M",
               16: "MOSTLY_Q5_K_S", 17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K"}

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
V3_TYPES = (F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, 10, 11, 12, 13, 14)  # GGJT v3: legacy + k-quants

_GLOBAL = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output", "rope.freqs": "rope_freqs"}
_LAYER = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
          "attention.wo": "attn_output", "attention_norm": "attn_norm", "feed_forward.w1": "ffn_gate",
          "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up", "ffn_norm": "ffn_norm"}

DEFAULT_CTX = 2048
DEFAULT_EPS = 5e-6


def is_legacy_ggml(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) in MAGICS
    except OSError:
        return False


class _Reader:
    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path, self.fmt = buf, 0, path, "GGML"

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ConvertError(f"{self.path}: truncated {self.fmt} file (ends inside {what}; it has "
                               f"{len(self.buf)} bytes, {what} needs bytes {self.pos}..{self.pos + n})")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32s(self, n: int, what: str) -> tuple[int, ...]:
        return struct.unpack(f"<{n}I", self.take(4 * n, what))


def _gguf_name(name: bytes, path: Path) -> str:
    try:
        s = name.decode("utf-8")
    except UnicodeDecodeError:
        raise ConvertError(f"{path}: tensor name {name!r} is not UTF-8") from None
    base, dot, suffix = s.rpartition(".")
    if suffix not in ("weight", "bias"):
        base, suffix = s, ""
    if base in _GLOBAL:
        return _GLOBAL[base] + ("." + suffix if suffix else "")
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", base)
    if m and m.group(2) in _LAYER:
        return f"blk.{m.group(1)}.{_LAYER[m.group(2)]}" + ("." + suffix if suffix else "")
    raise ConvertError(f"{path}: unexpected tensor name {s!r} in a legacy llama file")


def read(path: Path):
    """Parse the container. Returns (fmt, version, hparams dict, vocab [(bytes, score)], tensors
    [(name bytes, ggml type, dims in ggml order, data memoryview)])."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ConvertError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        size = f.seek(0, 2)
        if size < 4:
            raise ConvertError(f"{path}: truncated legacy GGML file ({size} bytes)")
        buf = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    r = _Reader(buf, path)
    magic = bytes(r.take(4, "the magic"))
    if magic == b"GGUF":
        raise ConvertError(f"{path}: already a GGUF file, nothing to convert")
    if magic not in MAGICS:
        raise ConvertError(f"{path}: not a GGML/GGMF/GGJT file (magic {magic!r})")
    fmt = r.fmt = MAGICS[magic]
    version = 1
    if fmt != "GGML":
        (version,) = r.u32s(1, "the version")
        if (fmt == "GGMF" and version != 1) or (fmt == "GGJT" and not 1 <= version <= 3):
            raise ConvertError(f"{path}: {fmt} version {version} is not a known version "
                               f"({'1' if fmt == 'GGMF' else '1 to 3'})")
    r.fmt = f"{fmt}v{version}"
    n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype = r.u32s(7, "the hyperparameters")
    hp = dict(n_vocab=n_vocab, n_embd=n_embd, n_mult=n_mult, n_head=n_head, n_layer=n_layer, n_rot=n_rot,
              ftype=ftype)
    if ftype not in FTYPE_NAMES:
        raise ConvertError(f"{path}: {r.fmt} file with unknown ftype {ftype}")
    if not (0 < n_head <= n_embd and n_embd % n_head == 0 and 0 < n_layer < 4096 and 3 <= n_vocab < 1 << 24):
        raise ConvertError(f"{path}: {r.fmt} hyperparameters make no sense (n_vocab {n_vocab}, n_embd {n_embd}, "
                           f"n_head {n_head}, n_layer {n_layer})")
    _check_eligible(path, r.fmt, fmt, version, ftype, None)
    vocab = []
    for i in range(n_vocab):
        (n,) = r.u32s(1, f"vocab item {i}")
        if n >= 4096:
            raise ConvertError(f"{path}: {r.fmt} vocab item {i} claims {n} bytes (corrupt file)")
        text = bytes(r.take(n, f"vocab item {i}"))
        score = struct.unpack("<f", r.take(4, f"vocab item {i}"))[0] if fmt != "GGML" else 0.0
        vocab.append((text, score))
    tensors = []
    while r.pos < len(buf):
        i = len(tensors)
        n_dims, name_len, ttype = r.u32s(3, f"tensor {i} header")
        if not 1 <= n_dims <= 4 or name_len >= 4096:
            raise ConvertError(f"{path}: {r.fmt} tensor {i} header is corrupt (n_dims {n_dims}, name length "
                               f"{name_len})")
        dims = r.u32s(n_dims, f"tensor {i} dims")
        name = bytes(r.take(name_len, f"tensor {i} name"))
        if ttype not in GGML_TYPES:
            raise ConvertError(f"{path}: {r.fmt} tensor {name.decode('utf-8', 'replace')!r} has unknown type {ttype}")
        _check_eligible(path, r.fmt, fmt, version, ftype, (name, ttype))
        _, block, tsize = GGML_TYPES[ttype]
        if dims[0] % block:
            raise ConvertError(f"{path}: {r.fmt} tensor {name.decode('utf-8', 'replace')!r}: row of {dims[0]} is "
                               f"not a multiple of the {GGML_TYPES[ttype][0]} block of {block}")
        if fmt == "GGJT":
            r.take(-r.pos % 32, f"tensor {name.decode('utf-8', 'replace')!r} padding")
        n_el = int(np.prod(dims, dtype=np.int64))
        data = r.take(n_el // block * tsize, f"tensor {name.decode('utf-8', 'replace')!r} data")
        tensors.append((name, ttype, dims, data))
    return fmt, version, hp, vocab, tensors


def _check_eligible(path: Path, label: str, fmt: str, version: int, ftype: int, tensor) -> None:
    """llama.cpp's rule: before GGJT v2 only unquantized files; GGJT v2's Q4/Q8 blocks changed in v3."""
    old = fmt != "GGJT" or version < 2
    v2 = fmt == "GGJT" and version == 2
    if tensor is None:
        bad = (old and ftype not in (0, 1)) or (v2 and ftype in (2, 3, 4, 7))
        what = FTYPE_NAMES.get(ftype, str(ftype))
    else:
        name, ttype = tensor
        bad = (old and ttype not in (F32, F16)) or (v2 and ttype not in (F32, F16, Q5_0, Q5_1)) or \
              (not old and not v2 and ttype not in V3_TYPES)
        what = f"{GGML_TYPES[ttype][0]} tensor {name.decode('utf-8', 'replace')!r}"
    if bad:
        why = ("quantized blocks changed in GGJTv2" if old else "Q4/Q8 blocks changed in GGJTv3") \
            if fmt != "GGJT" or version < 3 else "a type that GGJTv3 files never held"
        raise ConvertError(f"{path}: cannot convert a {label} file with {what}: {why} (re-quantize from an "
                           "F16/F32 file, or convert an F16/F32 one)")


def plan(path: Path, gqa: int = 1, eps: float = DEFAULT_EPS, n_ctx: int = DEFAULT_CTX,
         vocab_dir: Path | None = None, name: str | None = None) -> tuple[list[KV], list[TensorSpec]]:
    fmt, version, hp, vocab, tensors = read(path)
    label = f"{fmt}v{version}"
    n_head = hp["n_head"]
    if gqa < 1:
        raise ConvertError(f"--gqa must be >= 1, got {gqa}")
    n_head_kv = n_head if gqa == 1 else next((x for x in range(255, 0, -1) if n_head / x == gqa), None)
    if n_head_kv is None:
        raise ConvertError(f"--gqa {gqa}: {n_head} heads cannot be grouped by {gqa}")
    if not n_ctx > 0:
        raise ConvertError(f"-c/--context-length must be > 0, got {n_ctx}")
    by_name = {t[0]: t for t in tensors}
    ff = by_name.get(b"layers.0.feed_forward.w1.weight")
    if ff is None or len(ff[2]) < 2:
        raise ConvertError(f"{path}: {label} file has no tensor layers.0.feed_forward.w1.weight (needed for n_ff)")
    n_embd = hp["n_embd"]
    kvs = [
        KV("general.architecture", "llama", VT.STRING),
        KV("general.name", name if name is not None else path.name, VT.STRING),
        KV("general.description", f"converted from legacy {label} {FTYPE_NAMES[hp['ftype']]} format", VT.STRING),
        KV("general.file_type", hp["ftype"], VT.UINT32),
        KV("llama.context_length", n_ctx, VT.UINT32),
        KV("llama.embedding_length", n_embd, VT.UINT32),
        KV("llama.block_count", hp["n_layer"], VT.UINT32),
        KV("llama.feed_forward_length", ff[2][1], VT.UINT32),
        KV("llama.rope.dimension_count", n_embd // n_head, VT.UINT32),
        KV("llama.attention.head_count", n_head, VT.UINT32),
        KV("llama.attention.head_count_kv", n_head_kv, VT.UINT32),
        KV("llama.attention.layer_norm_rms_epsilon", float(eps), VT.FLOAT32),
    ]
    kvs += _vocab_kvs(path, vocab, hp["n_vocab"], vocab_dir)
    specs = []
    seen = set()
    for tname, ttype, dims, data in tensors:
        gname = _gguf_name(tname, path)
        if gname in seen:
            raise ConvertError(f"{path}: tensor {tname.decode()!r} appears twice")
        seen.add(gname)
        shape = tuple(int(d) for d in reversed(dims))  # numpy order: (n_out, n_in)
        specs.append(TensorSpec(gname, shape, ttype, lambda d=data: np.frombuffer(d, dtype=np.uint8)))
    return kvs, specs


def _vocab_kvs(path: Path, vocab: list[tuple[bytes, float]], n_vocab: int, vocab_dir: Path | None) -> list[KV]:
    if vocab_dir is not None:
        from .vocab import spm_vocab_legacy

        tok = Path(vocab_dir) / "tokenizer.model"
        if not tok.is_file():
            raise ConvertError(f"--vocab-dir {vocab_dir}: no tokenizer.model there")
        v = spm_vocab_legacy(tok)
        if len(v.tokens) != n_vocab:
            raise ConvertError(f"--vocab-dir {vocab_dir}: tokenizer.model has {len(v.tokens)} tokens, the model "
                               f"{n_vocab}")
        return [KV("tokenizer.ggml.model", "llama", VT.STRING), KV("tokenizer.ggml.pre", "default", VT.STRING),
                KV("tokenizer.ggml.tokens", v.tokens, VT.ARRAY, VT.STRING),
                KV("tokenizer.ggml.scores", v.scores, VT.ARRAY, VT.FLOAT32),
                KV("tokenizer.ggml.token_type", v.types, VT.ARRAY, VT.INT32)]
    tokens, scores, types = [], [], []
    for tid, (text, score) in enumerate(vocab):
        tt = 1  # normal
        if tid <= 2:
            text, tt = ((b"<unk>", 2), (b"<s>", 3), (b"</s>", 3))[tid]
        elif len(text) == 0:
            tt = 3  # control
        elif tid <= 258 and len(text) == 1:
            text, tt = f"<0x{text[0]:02X}>".encode(), 6  # byte
        else:
            text = text.replace(b" ", "\u2581".encode())
        tokens.append(text)
        scores.append(score)
        types.append(tt)
    return [KV("tokenizer.ggml.model", "llama", VT.STRING), KV("tokenizer.ggml.pre", "default", VT.STRING),
            KV("tokenizer.ggml.tokens", tokens, VT.ARRAY, VT.STRING),
            KV("tokenizer.ggml.scores", scores, VT.ARRAY, VT.FLOAT32),
            KV("tokenizer.ggml.token_type", types, VT.ARRAY, VT.INT32),
            KV("tokenizer.ggml.unknown_token_id", 0, VT.UINT32),
            KV("tokenizer.ggml.bos_token_id", 1, VT.UINT32),
            KV("tokenizer.ggml.eos_token_id", 2, VT.UINT32)]
