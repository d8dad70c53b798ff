"""LlamaConfig: the hyper-parameters of a llama-architecture model, read from GGUF metadata.

Owns: which metadata keys are required, their defaults (as llama.cpp applies them) and validation.
Must not: touch tensor data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import math

import numpy as np

from .errors import ModelError

SUPPORTED_ARCHITECTURES = ("llama",)
_INTS = {"embedding_length", "attention.head_count", "block_count", "feed_forward_length",
         "attention.head_count_kv", "attention.key_length", "attention.value_length", "rope.dimension_count",
         "context_length", "vocab_size"}
_NUMERIC = _INTS | {"rope.scaling.factor", "rope.scale_linear", "rope.freq_base",
                    "attention.layer_norm_rms_epsilon"}


@dataclass(frozen=True)
class LlamaConfig:
    n_vocab: int
    n_embd: int  # model width
    n_ff: int  # feed-forward width
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim_k: int  # attention.key_length (default n_embd / n_head)
    head_dim_v: int  # attention.value_length
    n_rot: int  # rope.dimension_count (<= head_dim_k)
    rope_freq_base: float
    rope_freq_scale: float  # 1 / linear scaling factor
    rms_eps: float
    n_ctx_train: int
    arch: str = "llama"

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv

    @classmethod
    def from_metadata(cls, md: dict[str, Any], path: str = "model") -> "LlamaConfig":
        arch = md.get("general.architecture")
        if arch is None:
            raise ModelError(f"{path}: missing required key 'general.architecture'")
        if not isinstance(arch, str) or arch not in SUPPORTED_ARCHITECTURES:
            raise ModelError(f"{path}: unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")

        def checked(key: str, v: Any) -> Any:
            """A number of the right kind (a file with a string or an array here fails with its key named)."""
            full = f"{arch}.{key}"
            if v is None or isinstance(v, (str, bytes, list, tuple, dict, np.ndarray)) or isinstance(v, bool):
                if v is None or key in _NUMERIC:
                    raise ModelError(f"{path}: key {full!r} must be a number, got {v!r:.40}")
                return v
            if key in _INTS:
                if not float(v).is_integer() or not 0 <= v < 1 << 31:
                    raise ModelError(f"{path}: key {full!r} must be an integer in [0, 2^31), got {v!r:.40}")
            elif key in _NUMERIC and not math.isfinite(v):
                raise ModelError(f"{path}: key {full!r} must be a finite number, got {v!r:.40}")
            return v

        def req(key: str) -> Any:
            full = f"{arch}.{key}"
            if full not in md:
                raise ModelError(f"{path}: missing required key {full!r}")
            return checked(key, md[full])

        def opt(key: str, default: Any) -> Any:
            full = f"{arch}.{key}"
            return checked(key, md[full]) if full in md else default

        n_embd = int(req("embedding_length"))
        n_head = int(req("attention.head_count"))
        n_layer = int(req("block_count"))
        n_ff = int(req("feed_forward_length"))
        n_head_kv = int(opt("attention.head_count_kv", n_head))
        if n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
            raise ModelError(f"{path}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
        if n_embd % n_head and f"{arch}.attention.key_length" not in md:
            raise ModelError(f"{path}: embedding_length {n_embd} is not divisible by head_count {n_head}")
        head_dim_k = int(opt("attention.key_length", n_embd // n_head))
        head_dim_v = int(opt("attention.value_length", n_embd // n_head))
        n_rot = int(opt("rope.dimension_count", head_dim_k))
        if n_rot > head_dim_k or n_rot % 2:
            raise ModelError(f"{path}: rope.dimension_count {n_rot} must be even and <= head size {head_dim_k}")
        scale = 1.0
        stype = opt("rope.scaling.type", None)
        if stype is not None and not isinstance(stype, str):
            raise ModelError(f"{path}: key '{arch}.rope.scaling.type' must be a string, got {stype!r:.40}")
        factor = float(opt("rope.scaling.factor", 0.0) or 0.0)
        if stype in (None, "linear") and factor > 0:
            scale = 1.0 / factor
        elif "rope.scale_linear" in md or f"{arch}.rope.scale_linear" in md:
            f = float(opt("rope.scale_linear", 1.0))
            scale = 1.0 / f if f > 0 else 1.0
        elif stype not in (None, "none", "linear"):
            raise ModelError(f"{path}: unsupported rope scaling type {stype!r}")
        if not (n_embd > 0 and n_layer > 0 and n_ff > 0 and head_dim_k > 0 and head_dim_v > 0):
            raise ModelError(f"{path}: embedding_length, block_count, feed_forward_length and head sizes must be "
                             f"positive (got {n_embd}, {n_layer}, {n_ff}, {head_dim_k}, {head_dim_v})")
        tokens = md.get("tokenizer.ggml.tokens")
        n_vocab = int(opt("vocab_size", len(tokens) if isinstance(tokens, (list, tuple, np.ndarray)) else 0))
        return cls(
            n_vocab=n_vocab,
            n_embd=n_embd,
            n_ff=n_ff,
            n_layer=n_layer,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim_k=head_dim_k,
            head_dim_v=head_dim_v,
            n_rot=n_rot,
            rope_freq_base=float(opt("rope.freq_base", 10000.0)),
            rope_freq_scale=scale,
            rms_eps=float(opt("attention.layer_norm_rms_epsilon", 1e-5)),
            n_ctx_train=int(opt("context_length", 2048)),
            arch=arch,
        )
