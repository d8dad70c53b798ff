"""Shared pieces of the converters: the error type, lazy source tensors, output types and tensor encoding.

Owns: `ConvertError`/`UnsafePickleError`, `LazyTensor` (a source tensor known by shape and dtype whose bytes
are read only when its turn comes), the `--outtype` table (ggml type + `general.file_type` value), the rule
that picks each tensor's output type as llama.cpp's converters do (1-D tensors and norms stay F32), encoding
an array to that type with the `gguf` package's reference quantizers, and the writer-describing metadata
(model name from the folder name, size label from the parameter count).

Must not: know any checkpoint layout (that is hf.py, meta.py, llama2c.py) or write files itself.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType as QT

from .. import quants
from ..errors import LlamacpyError


class ConvertError(LlamacpyError):
    """The checkpoint is missing, incomplete, inconsistent or of an unsupported kind."""


class UnsafePickleError(ConvertError):
    """A pickle asked for a global outside the small allow-list a state dict needs (refused for security)."""


# source dtypes a LazyTensor may have -> numpy dtype of the raw array `load()` returns
SOURCE_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bfloat16 words
}


@dataclass
class LazyTensor:
    """A source tensor: `load()` returns a C-contiguous array of `shape` in SOURCE_DTYPES[dtype]."""

    shape: tuple[int, ...]
    dtype: str
    load: Callable[[], np.ndarray]

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> "LazyTensor":
        """A lazy, shape-preserving reordering of the elements (e.g. the Q/K rotary permutation)."""
        load = self.load
        return LazyTensor(self.shape, self.dtype, lambda: fn(load()))


def to_f32(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Exact widening to float32 (bf16 words shift into the high half of a float32)."""
    if dtype == "BF16":
        wide = arr.astype(np.uint32)
        np.left_shift(wide, 16, out=wide)
        return wide.view(np.float32)
    return arr.astype(np.float32, copy=False)


# --outtype -> (ggml type for 2-D weights, general.file_type)
OUTTYPES: dict[str, tuple[QT, int]] = {
    "f32": (QT.F32, 0),
    "f16": (QT.F16, 1),
    "q8_0": (QT.Q8_0, 7),
    "bf16": (QT.BF16, 32),
}


def pick_type(name: str, shape: tuple[int, ...], outtype: str) -> QT:
    """Output type of one tensor: 1-D tensors and norms stay F32; Q8_0 falls back to F16 when rows are not
    a multiple of 32 (as convert_hf_to_gguf.py does when the quantizer refuses)."""
    n_dims = sum(1 for d in shape if d != 1) if len(shape) > 1 else len(shape)
    if n_dims <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return QT.F32
    qtype = OUTTYPES[outtype][0]
    if qtype == QT.Q8_0 and shape[-1] % 32 != 0:
        return QT.F16
    return qtype


def encode(arr: np.ndarray, dtype: str, qtype: QT) -> np.ndarray:
    """Raw bytes-as-array of `arr` (source dtype `dtype`) in ggml type `qtype`."""
    if qtype == QT.BF16 and dtype == "BF16":
        return arr  # already bf16 words: keep them
    if qtype == QT.F16 and dtype == "F16":
        return arr
    f32 = to_f32(arr, dtype)
    return quants.quantize(f32.reshape(-1, f32.shape[-1]), int(qtype)).reshape(*f32.shape[:-1], -1)


def model_title(folder_name: str) -> str:
    """general.name as llama.cpp derives it from a folder name ('hf-tiny-llama' -> 'Hf Tiny Llama')."""
    from gguf.metadata import Metadata

    return Metadata.id_to_title(folder_name)


def size_label(n_params: int) -> str:
    from gguf.utility import size_label as _size_label

    return _size_label(n_params, n_params, 0, 0)


def progress_factory():
    """A tqdm wrapper for the tensor loop when stderr is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    def wrap(tensors):
        return tqdm(tensors, desc="converting", unit="tensor", file=sys.stderr)

    return wrap


_ABSENT = object()


def check_config(cfg, path, ints: dict, floats: dict = None, dicts: tuple = (), strlists: tuple = ()) -> dict:
    """Validate the fields of a params.json / config.json that a converter uses, before it uses them, so a
    malformed file ends in one ConvertError naming the file and the field (never a TypeError deep inside).
    `ints`: key -> (required, lowest, highest); `floats`: key -> required (finite, > 0); `dicts`: keys that
    must be an object or null; `strlists`: keys that must be a list of strings or null. null counts as absent."""
    if not isinstance(cfg, dict):
        raise ConvertError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    for key, (required, lo, hi) in ints.items():
        v = cfg.get(key)
        if v is None:
            if required:
                raise ConvertError(f"{path}: missing {key}")
            continue
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConvertError(f"{path}: {key} must be an integer in [{lo}, {hi}], got {v!r:.60}")
        cfg[key] = v
    for key, required in (floats or {}).items():
        v = cfg.get(key)
        if v is None:
            if required:
                raise ConvertError(f"{path}: missing {key}")
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < float("inf")):
            raise ConvertError(f"{path}: {key} must be a positive number, got {v!r:.60}")
    for key in dicts:
        if cfg.get(key) is not None and not isinstance(cfg[key], dict):
            raise ConvertError(f"{path}: {key} must be an object or null, got {cfg[key]!r:.60}")
    for key in strlists:
        v = cfg.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
            raise ConvertError(f"{path}: {key} must be a list of strings, got {v!r:.60}")
    return cfg
