"""Reading `.safetensors` files without torch.

Owns: validating the header (8-byte little-endian length + JSON: dtype, shape, data_offsets per tensor) and
handing out lazy tensors backed by a memory map of the file. bf16 data stays as raw uint16 words.

Must not: convert or reorder tensors (the callers do).
"""

from __future__ import annotations

import json
import mmap
import os
import struct

import numpy as np

from .common import ConvertError, LazyTensor, SOURCE_DTYPES

_DTYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16"}
_MAX_HEADER = 100 << 20


def load_safetensors(path: str | os.PathLike) -> dict[str, LazyTensor]:
    """Lazy tensors of one safetensors file, in header order."""
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ConvertError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise ConvertError(f"{path}: truncated safetensors header (file is {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise ConvertError(f"{path}: truncated safetensors header (header says {n} bytes, "
                               f"file has {size - 8} after the length)")
        raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConvertError(f"{path}: invalid safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise ConvertError(f"{path}: invalid safetensors header (not a JSON object)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else b""
    base = 8 + n
    out: dict[str, LazyTensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (start, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), \
                entry["data_offsets"]
        except (KeyError, TypeError, ValueError, OverflowError):
            raise ConvertError(f"{path}: invalid safetensors header entry for {name!r}") from None
        if not (isinstance(dtype_name, str) and all(isinstance(v, int) and not isinstance(v, bool) for v in
                                                    (start, end)) and all(d >= 0 for d in shape)):
            raise ConvertError(f"{path}: invalid safetensors header entry for {name!r} (dtype, shape or "
                               "data_offsets of the wrong kind)")
        dtype = _DTYPES.get(dtype_name)
        if dtype is None:
            raise ConvertError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name} "
                               "(expected F32, F16 or BF16)")
        np_dtype = SOURCE_DTYPES[dtype]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - start != count * np_dtype.itemsize or start < 0 or base + end > size:
            raise ConvertError(f"{path}: tensor {name!r}: data offsets [{start}, {end}) do not fit its shape "
                               f"{list(shape)} or run past the end of the file (truncated?)")
        out[name] = LazyTensor(shape, dtype, _loader(mm, np_dtype, count, base + start, shape))
    return out


def _loader(mm, dtype: np.dtype, count: int, offset: int, shape: tuple[int, ...]):
    def load() -> np.ndarray:
        return np.frombuffer(mm, dtype=dtype, count=count, offset=offset).reshape(shape)

    return load
