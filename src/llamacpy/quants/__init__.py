"""The one table of ggml tensor types and their reference codecs.

Owns: `QUANT_TYPES[ggml_type] -> QuantType` (name, block size, bytes per block, whether it is quantized,
whether we can encode it), `dequantize(raw, ggml_type, shape) -> float32` and
`quantize(x, ggml_type) -> uint8 rows`, for F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K,
Q5_K, Q6_K. Quantizers are byte-identical to ggml's reference quantizers (what llama-quantize runs without an
importance matrix); dequantizers are numpy, vectorised over blocks.

Must not: decide which tensor gets which type (quantize.py), read or write files, or run matmuls
(kernels/ owns the fast decode paths; this module is their reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..gguf_file import GGML_TYPES
from . import half, kquants, legacy

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 10, 11, 12, 13, 14
BF16 = 30


@dataclass(frozen=True)
class QuantType:
    """One ggml tensor type. `block_size` elements take `type_size` bytes."""

    ggml_type: int
    name: str
    block_size: int
    type_size: int
    quantized: bool  # a block format (not F32/F16/BF16)
    dequantize_blocks: Callable[[np.ndarray], np.ndarray] | None = None  # (nb, type_size) u8 -> (nb, bs) f32
    quantize_blocks: Callable[[np.ndarray, np.ndarray], None] | None = None  # (nb, bs) f32 -> fills (nb, ts)

    def row_bytes(self, n_cols: int) -> int:
        """Bytes of one row of n_cols elements (n_cols must be a multiple of block_size)."""
        return n_cols // self.block_size * self.type_size

    @property
    def can_quantize(self) -> bool:
        return self.quantize_blocks is not None or not self.quantized


_CODECS: dict[int, tuple[Callable | None, Callable | None]] = {
    Q4_0: (legacy.dequantize_q4_0, legacy.quantize_q4_0),
    Q4_1: (legacy.dequantize_q4_1, legacy.quantize_q4_1),
    Q5_0: (legacy.dequantize_q5_0, legacy.quantize_q5_0),
    Q5_1: (legacy.dequantize_q5_1, legacy.quantize_q5_1),
    Q8_0: (legacy.dequantize_q8_0, legacy.quantize_q8_0),
    Q2_K: (kquants.dequantize_q2_k, kquants.quantize_q2_k),
    Q3_K: (kquants.dequantize_q3_k, kquants.quantize_q3_k),
    Q4_K: (kquants.dequantize_q4_k, kquants.quantize_q4_k),
    Q5_K: (kquants.dequantize_q5_k, kquants.quantize_q5_k),
    Q6_K: (kquants.dequantize_q6_k, kquants.quantize_q6_k),
}

_FLOAT_TYPES = (F32, F16, BF16)

QUANT_TYPES: dict[int, QuantType] = {}
for _t, (_name, _bs, _ts) in GGML_TYPES.items():
    _dq, _q = _CODECS.get(_t, (None, None))
    QUANT_TYPES[_t] = QuantType(_t, _name, _bs, _ts, _t not in _FLOAT_TYPES and _bs > 1, _dq, _q)

SUPPORTED = (F32, F16, BF16, *_CODECS)  # the types dequantize/quantize handle
TYPE_BY_NAME: dict[str, int] = {qt.name: t for t, qt in QUANT_TYPES.items()}


def type_name(ggml_type: int) -> str:
    qt = QUANT_TYPES.get(ggml_type)
    return qt.name if qt else f"type{ggml_type}"


def _get(ggml_type: int) -> QuantType:
    if ggml_type not in SUPPORTED:
        raise ValueError(f"unsupported ggml type {type_name(ggml_type)} ({ggml_type})")
    return QUANT_TYPES[ggml_type]


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """Raw tensor bytes (any uint8 array, e.g. GGUFFile.tensor_bytes) of type ggml_type -> float32 of `shape`
    (numpy order, innermost last)."""
    qt = _get(ggml_type)
    data = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if ggml_type == F32:
        out = data.view(np.float32).copy()
    elif ggml_type == F16:
        out = data.view(np.float16).astype(np.float32)
    elif ggml_type == BF16:
        out = half.bf16_to_f32(data.view(np.uint16))
    else:
        out = qt.dequantize_blocks(data.reshape(-1, qt.type_size))
    return out.reshape(shape)


def quantize(x: np.ndarray, ggml_type: int) -> np.ndarray:
    """float32 (n_rows, n_cols) -> uint8 (n_rows, bytes_per_row) in ggml_type, as ggml's reference quantizers.
    n_cols must be a multiple of the type's block size. A 1-D x is one row."""
    qt = _get(ggml_type)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2:
        raise ValueError(f"quantize: expected a 2-D (rows, cols) array, got shape {x.shape}")
    n_rows, n_cols = x.shape
    if n_cols % qt.block_size:
        raise ValueError(f"quantize: row length {n_cols} is not a multiple of {qt.name}'s block size "
                         f"{qt.block_size}")
    if ggml_type == F32:
        return x.view(np.uint8).copy()
    if ggml_type == F16:
        return half.f32_to_f16(x).view(np.uint8)
    if ggml_type == BF16:
        return half.f32_to_bf16(x).view(np.uint8)
    out = np.empty((n_rows * n_cols // qt.block_size, qt.type_size), np.uint8)
    if out.shape[0]:
        qt.quantize_blocks(x.reshape(-1, qt.block_size), out)  # (n_blocks, block_size) -> (n_blocks, type_size)
    return out.reshape(n_rows, qt.row_bytes(n_cols))


__all__ = ["QUANT_TYPES", "QuantType", "SUPPORTED", "TYPE_BY_NAME", "dequantize", "quantize", "type_name",
           "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
