"""Linear (weight matrix) objects -- PLACEHOLDER implementation: dequantize with gguf's reference code and use
numpy. The kernels issue replaces this with numba kernels that read the quantized weights in place."""

from __future__ import annotations

import numpy as np
import numba

from ..errors import ModelError
from ..gguf_file import ggml_type_name

SUPPORTED = {0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30}


def set_num_threads(n: int) -> None:
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def get_num_threads() -> int:
    return numba.get_num_threads()


class Linear:
    def __init__(self, ggml_type: int, raw: np.ndarray, shape: tuple[int, int], name: str = ""):
        self.ggml_type = ggml_type
        self.raw = raw
        self.n_out, self.n_in = shape
        self.name = name
        self._w: np.ndarray | None = None

    def _dense(self) -> np.ndarray:
        if self._w is None:
            if self.ggml_type == 0:
                self._w = np.asarray(self.raw, dtype=np.float32).reshape(self.n_out, self.n_in)
            elif self.ggml_type == 1:
                self._w = self.raw.astype(np.float32).reshape(self.n_out, self.n_in)
            elif self.ggml_type == 30:
                self._w = (self.raw.astype(np.uint32) << 16).view(np.float32).reshape(self.n_out, self.n_in)
            else:
                from gguf.quants import dequantize
                from gguf import GGMLQuantizationType

                self._w = dequantize(np.asarray(self.raw), GGMLQuantizationType(self.ggml_type)).reshape(
                    self.n_out, self.n_in).astype(np.float32)
        return self._w

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        w = self._dense()
        if out is None:
            return x @ w.T
        np.matmul(x, w.T, out=out)
        return out

    def get_rows(self, ids) -> np.ndarray:
        return np.ascontiguousarray(self._dense()[np.asarray(ids)], dtype=np.float32)


def make_linear(ggml_type: int, raw: np.ndarray, shape: tuple[int, int], name: str = "") -> Linear:
    if ggml_type not in SUPPORTED:
        raise ModelError(f"tensor {name!r}: unsupported tensor type {ggml_type_name(ggml_type)}")
    return Linear(ggml_type, raw, shape, name)
