"""Reading PyTorch checkpoints (`.pth`, `pytorch_model*.bin`) without torch, safely.

Owns: opening torch's zip format (a folder holding `data.pkl` plus one member per storage), unpickling the
state dict with an unpickler whose `find_class` allows only what a state dict of tensors needs
(`torch._utils._rebuild_tensor_v2`, `collections.OrderedDict` and the torch storage types), and mapping each
storage lazily onto the bytes of its zip member through a memory map (members are stored uncompressed).
Any other global in the pickle is refused before anything from the file runs.

Must not: import torch, or execute anything the pickle names beyond the allow-list.
"""

from __future__ import annotations

import collections
import io
import mmap
import os
import pickle
import zipfile
from typing import Any

import numpy as np

from .common import ConvertError, LazyTensor, SOURCE_DTYPES, UnsafePickleError

# torch storage class name -> our source dtype
_STORAGE_DTYPES = {
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
}
# storage types that exist in torch but that a llama checkpoint should not need: named in the error
_OTHER_STORAGES = {"DoubleStorage", "LongStorage", "IntStorage", "ShortStorage", "CharStorage", "ByteStorage",
                   "BoolStorage", "UntypedStorage"}


class _StorageType:
    """Stand-in for a torch storage class found in the pickle."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES.get(name)


class _Storage:
    """One storage: a lazily mapped 1-D array over its zip member."""

    def __init__(self, archive: "_Archive", key: str, dtype: str, numel: int):
        self.archive, self.key, self.dtype, self.numel = archive, key, dtype, numel

    def array(self) -> np.ndarray:  # (numel,) in SOURCE_DTYPES[dtype]
        return self.archive.member_array(self.key, SOURCE_DTYPES[self.dtype], self.numel)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> LazyTensor:
    if not isinstance(storage, _Storage):
        raise ConvertError("malformed checkpoint: tensor without a storage")
    shape = tuple(int(s) for s in size)
    strides = tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if shape:
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else offset
    else:
        last = offset
    if offset < 0 or any(s < 0 for s in strides) or (all(shape) and last >= storage.numel):
        raise ConvertError(f"malformed checkpoint: tensor of shape {shape} runs past its storage "
                           f"({storage.numel} elements)")

    def load() -> np.ndarray:
        base = storage.array()
        item = base.itemsize
        view = np.lib.stride_tricks.as_strided(base[offset:], shape=shape, strides=[s * item for s in strides])
        return np.ascontiguousarray(view)

    return LazyTensor(shape, storage.dtype, load)


class _Archive:
    """A torch zip checkpoint, memory-mapped."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except OSError as e:
            raise ConvertError(f"{path}: cannot open ({e.strerror})") from None
        except Exception:  # BadZipFile, and the ValueError/EOFError/struct.error a damaged directory gives
            raise ConvertError(f"{path}: not a PyTorch zip checkpoint (legacy non-zip torch pickles are not "
                               "supported; re-save with a recent torch)") from None
        pkls = [n for n in self.zip.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkls) != 1:
            raise ConvertError(f"{path}: not a PyTorch checkpoint (no single data.pkl in the archive)")
        self.prefix = pkls[0][: -len("data.pkl")]
        with open(path, "rb") as f:
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def member_array(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        name = f"{self.prefix}data/{key}"
        try:
            info = self.zip.getinfo(name)
        except KeyError:
            raise ConvertError(f"{self.path}: storage {name!r} is missing from the archive") from None
        if info.file_size < numel * dtype.itemsize:
            raise ConvertError(f"{self.path}: storage {name!r} holds {info.file_size} bytes, "
                               f"needs {numel * dtype.itemsize}")
        if info.compress_type != zipfile.ZIP_STORED:  # unusual: decompress this one member
            return np.frombuffer(self.read(name), dtype=dtype, count=numel)
        # local file header: 30 fixed bytes, then the file name and the extra field
        h = info.header_offset
        if h < 0 or h + 30 > len(self.mm) or self.mm[h:h + 4] != b"PK\x03\x04":
            raise ConvertError(f"{self.path}: storage {name!r}: damaged zip entry (no local header at byte {h})")
        name_len = int.from_bytes(self.mm[h + 26 : h + 28], "little")
        extra_len = int.from_bytes(self.mm[h + 28 : h + 30], "little")
        start = h + 30 + name_len + extra_len
        if start + numel * dtype.itemsize > len(self.mm):
            raise ConvertError(f"{self.path}: storage {name!r} runs past the end of the file (truncated?)")
        return np.frombuffer(self.mm, dtype=dtype, count=numel, offset=start)

    def read(self, name: str) -> bytes:
        """One member's bytes (checked by zipfile against its CRC)."""
        try:
            return self.zip.read(name)
        except Exception as e:  # BadZipFile (CRC, header), zlib.error, EOFError, ...
            raise ConvertError(f"{self.path}: damaged zip member {name!r} ({type(e).__name__}: {str(e)!r:.120})") from None


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a tensor state dict needs; everything else is refused."""

    def __init__(self, file, archive: _Archive):
        super().__init__(file)
        self.archive = archive

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in _OTHER_STORAGES:
            raise ConvertError(f"{self.archive.path}: tensors of torch.{name} are not supported "
                               "(expected float32, float16 or bfloat16 weights)")
        raise UnsafePickleError(
            f"{self.archive.path}: refused to load global {(module + '.' + name)!r} from the pickle: for security, "
            "only torch tensor rebuild functions and storage types are allowed")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ConvertError(f"{self.archive.path}: unexpected persistent id in the pickle: {pid!r}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or stype.dtype is None:
            raise ConvertError(f"{self.archive.path}: unsupported storage type {stype!r}")
        return _Storage(self.archive, str(key), stype.dtype, int(numel))


def load_state_dict(path: str | os.PathLike) -> dict[str, LazyTensor]:
    """Lazy state dict of a torch zip checkpoint, in pickle order."""
    path = os.fspath(path)
    archive = _Archive(path)
    data = archive.read(f"{archive.prefix}data.pkl")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), archive).load()
    except ConvertError:
        raise
    except Exception as e:  # malformed pickle bytes
        raise ConvertError(f"{path}: cannot read the checkpoint's pickle ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise ConvertError(f"{path}: the checkpoint does not hold a state dict ({type(obj).__name__})")
    out: dict[str, LazyTensor] = {}
    for k, v in obj.items():
        if isinstance(v, LazyTensor):
            out[str(k)] = v
    if not out:
        raise ConvertError(f"{path}: no tensors in the checkpoint")
    return out
