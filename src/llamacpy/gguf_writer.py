"""Writing GGUF files: a thin, streaming, crash-safe layer over the `gguf` package's GGUFWriter.

Owns: the write protocol every writer in the project uses (converters, quantize, test fixtures):
metadata in a given order with explicit value types, tensor infos first, then tensor data produced one
tensor at a time (so peak memory stays near the largest tensor), written to a temporary file in the
destination folder, flushed to disk (fsync of the file, then of the folder after the rename) and renamed into place
only when complete, with the permissions the umask allows (as open() would give). Interrupted or failed writes
leave no file.

Must not: decide what goes in a file (converters and quantize decide that).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from .errors import LlamacpyError
from .gguf_file import GGML_TYPES


@dataclass
class TensorSpec:
    """A tensor to write. `shape` in numpy order (outermost first, e.g. (n_out, n_in)).
    `produce()` returns an array whose raw bytes are the tensor data: float32/float16 for F32/F16, uint16 for
    BF16, uint8 blocks for quantized types. It is called once, when the tensor's turn comes."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        _, block, size = GGML_TYPES[self.ggml_type]
        n = 1
        for d in self.shape:
            n *= d
        return n // block * size


@dataclass
class KV:
    """One metadata entry with its GGUF value type (and element type for arrays)."""

    key: str
    value: Any
    vtype: GGUFValueType
    subtype: GGUFValueType | None = None


def copy_kvs(src) -> list[KV]:
    """All metadata of an open `GGUFFile`, type-exact, in file order (GGUF.* pseudo-keys excluded)."""
    out = []
    for key, value in src.metadata.items():
        vtype, sub = src.metadata_types[key]
        if isinstance(value, np.ndarray):
            value = value.tolist()
        out.append(KV(key, value, GGUFValueType(vtype), GGUFValueType(sub) if sub is not None else None))
    return out


def write_gguf(
    path: str | os.PathLike,
    kvs: Sequence[KV],
    tensors: Sequence[TensorSpec],
    *,
    alignment: int | None = None,
    progress: Callable[[Iterable[TensorSpec]], Iterable[TensorSpec]] | None = None,
    require_arch: bool = True,
) -> None:
    """Write a complete GGUF file atomically. `kvs` must include general.architecture unless `require_arch`
    is False (the later parts of a split model hold only split.* keys).
    `progress` optionally wraps the tensor iteration (e.g. a tqdm factory)."""
    path = os.fspath(path)
    out_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(out_dir):
        raise LlamacpyError(f"{path}: output folder {out_dir} does not exist")
    arch = next((kv.value for kv in kvs if kv.key == "general.architecture"), None)
    if arch is None and not require_arch:
        arch = ""
    elif arch is None:
        raise ValueError("write_gguf: metadata must contain general.architecture")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".gguf", dir=out_dir)
    except OSError as e:
        raise LlamacpyError(f"{path}: cannot write output file ({e.strerror})") from None
    os.close(fd)
    try:
        writer = GGUFWriter(tmp, arch, use_temp_file=False)
        writer.kv_data[0].clear()  # GGUFWriter pre-adds general.architecture; we add every key ourselves in order
        if alignment is not None:
            writer.data_alignment = alignment
        for kv in kvs:
            writer.add_key_value(kv.key, kv.value, kv.vtype, sub_type=kv.subtype)
        for t in tensors:
            # element shape in numpy order (the writer reverses it); a non-uint8 dtype keeps the writer from
            # reinterpreting the shape as a byte shape
            writer.add_tensor_info(t.name, list(t.shape), np.dtype(np.float32), t.nbytes,
                                   raw_dtype=GGMLQuantizationType(t.ggml_type))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        it = progress(tensors) if progress else tensors
        for t in it:
            data = np.ascontiguousarray(t.produce())
            if data.nbytes != t.nbytes:
                raise LlamacpyError(f"tensor {t.name!r}: produced {data.nbytes} bytes, expected {t.nbytes}")
            writer.write_tensor_data(data.reshape(-1).view(np.uint8))
        writer.close()
        _fsync_path(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp made it 0o600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(out_dir)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    """Make the rename itself durable. Folders cannot be opened on Windows: nothing to do there."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
