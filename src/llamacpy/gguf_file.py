"""Memory-mapped GGUF reader.

Owns: parsing a GGUF file's header, metadata and tensor table, and handing out zero-copy numpy views of
tensor data straight from the memory map. Metadata arrays are parsed in bulk (numeric arrays are
`np.frombuffer` views; string arrays are decoded in one pass), so opening a file with a 128K-token vocabulary
takes a fraction of a second. Opening touches only the header pages: resident memory grows with the tensor
pages that are actually read.

Must not: interpret metadata (that is `config.py` / `tokenizer`), dequantize (that is `quants`), or write
files (writing uses the `gguf` package's `GGUFWriter`).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GGUFError
from .mmap_advice import advise_hugepages

GGUF_MAGIC = b"GGUF"
SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"  # gguf-split's keys
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types -> (struct code, numpy dtype)
_SCALAR_TYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("<B", np.dtype("<u1")),
    1: ("<b", np.dtype("<i1")),
    2: ("<H", np.dtype("<u2")),
    3: ("<h", np.dtype("<i2")),
    4: ("<I", np.dtype("<u4")),
    5: ("<i", np.dtype("<i4")),
    6: ("<f", np.dtype("<f4")),
    7: ("<?", np.dtype("bool")),
    10: ("<Q", np.dtype("<u8")),
    11: ("<q", np.dtype("<i8")),
    12: ("<d", np.dtype("<f8")),
}
_STRING = 8
_ARRAY = 9

# ggml tensor type id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
}


def ggml_type_name(ggml_type: int) -> str:
    entry = GGML_TYPES.get(ggml_type)
    return entry[0] if entry else f"type{ggml_type}"


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table. `shape` is numpy order (outermost first): a weight of
    n_out rows by n_in columns has shape (n_out, n_in); GGUF stores the reverse (ne[0] = n_in)."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    offset: int  # absolute offset of the data in the file
    nbytes: int
    part: int = 0  # index of the file holding the data (0 unless the model is split, see GGUFFile)

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.ggml_type)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class _Cursor:
    """Sequential little-endian reader over a buffer, raising GGUFError on truncation."""

    def __init__(self, buf: memoryview, path: str):
        self.buf = buf
        self.pos = 0
        self.path = path
        self.size = len(buf)

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            raise GGUFError(f"{self.path}: truncated GGUF file (while reading {what} at byte {self.pos})")

    def scalar(self, vtype: int, what: str) -> Any:
        code, dtype = _SCALAR_TYPES[vtype]
        self.need(dtype.itemsize, what)
        (v,) = struct.unpack_from(code, self.buf, self.pos)
        self.pos += dtype.itemsize
        return v

    def u32(self, what: str) -> int:
        return self.scalar(4, what)

    def u64(self, what: str) -> int:
        return self.scalar(10, what)

    def string(self, what: str) -> str:
        n = self.u64(what)
        self.need(n, what)
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="surrogateescape")
        self.pos += n
        return s

    def string_array(self, count: int, what: str) -> list[str]:
        buf, pos, size = self.buf, self.pos, self.size
        unpack = struct.Struct("<Q").unpack_from
        out = [None] * count
        for i in range(count):
            if pos + 8 > size:
                raise GGUFError(f"{self.path}: truncated GGUF file (while reading {what}[{i}])")
            (n,) = unpack(buf, pos)
            pos += 8
            end = pos + n
            if end > size:
                raise GGUFError(f"{self.path}: truncated GGUF file (while reading {what}[{i}])")
            out[i] = bytes(buf[pos:end]).decode("utf-8", errors="surrogateescape")
            pos = end
        self.pos = pos
        return out  # type: ignore[return-value]

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            etype = self.u32(what)
            count = self.u64(what)
            # every element takes at least this many bytes: a count the rest of the file cannot hold is refused
            # before anything is allocated for it
            least = 8 if etype == _STRING else 12 if etype == _ARRAY else (
                _SCALAR_TYPES[etype][1].itemsize if etype in _SCALAR_TYPES else 1)
            if count * least > self.size - self.pos:
                raise GGUFError(f"{self.path}: truncated GGUF file (array {what!r} claims {count} elements, "
                                f"{self.size - self.pos} bytes are left)")
            if etype == _STRING:
                return self.string_array(count, what)
            if etype in _SCALAR_TYPES:
                dtype = _SCALAR_TYPES[etype][1]
                nbytes = count * dtype.itemsize
                self.need(nbytes, what)
                arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
                self.pos += nbytes
                return arr
            if etype == _ARRAY:
                if depth >= 8:
                    raise GGUFError(f"{self.path}: array {what!r} nests deeper than 8 levels")
                return [self.value(_ARRAY, what, depth + 1) for _ in range(count)]
            raise GGUFError(f"{self.path}: unknown array element type {etype} in key {what!r}")
        if vtype in _SCALAR_TYPES:
            return self.scalar(vtype, what)
        raise GGUFError(f"{self.path}: unknown metadata value type {vtype} in key {what!r}")


class GGUFFile:
    """A GGUF file opened read-only through mmap.

    `metadata`: dict key -> value (Python scalars, str, numpy arrays for numeric arrays, list[str] for string
    arrays). `tensors`: dict name -> TensorInfo, in file order. `tensor(name)` returns a zero-copy numpy view.
    """

    def __init__(self, path: str | os.PathLike, _single: bool = False):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise GGUFError(f"{self.path}: no such file")
        if os.path.isdir(self.path):
            raise GGUFError(f"{self.path}: is a directory, not a GGUF file")
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                head = f.read(4)
                if head != GGUF_MAGIC:
                    raise GGUFError(f"{self.path}: not a GGUF file (bad magic {head!r})")
                raise GGUFError(f"{self.path}: truncated GGUF file ({size} bytes)")
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            advise_hugepages(self._mmap)  # F16/BF16 weights are read in place: 2 MiB mappings (repack_cache)
        self.size = size
        self._buf = memoryview(self._mmap)
        self._parse()
        self._mmaps = [self._mmap]  # one per file of a split model, indexed by TensorInfo.part
        self.parts = [self.path]
        if not _single:
            self._open_split_parts()

    def _open_split_parts(self) -> None:
        """gguf-split output: every part has split.no (u16), split.count (u16) and split.tensors.count (i32);
        the first holds all metadata. Given the first part NAME-00001-of-0000N.gguf, open the others (as
        llama.cpp's loader does, from the same prefix) and merge their tensor tables."""
        count = self.metadata.get(SPLIT_COUNT)
        if count is None:
            return
        no = self.metadata.get(SPLIT_NO, 0)
        if not isinstance(count, int) or not isinstance(no, int) or count < 1 or not 0 <= no < count:
            raise GGUFError(f"{self.path}: invalid split metadata ({SPLIT_NO}={no!r}, {SPLIT_COUNT}={count!r})")
        if count == 1:
            return
        m = re.fullmatch(r"(.*)-(\d{5})-of-(\d{5})\.gguf", self.path)
        if no != 0:
            first = f"{m.group(1)}-00001-of-{count:05d}.gguf" if m else "its first part"
            raise GGUFError(f"{self.path}: this is part {no + 1} of {count} of a split model; open {first}")
        if not m or int(m.group(2)) != 1 or int(m.group(3)) != count:
            raise GGUFError(f"{self.path}: split model ({SPLIT_COUNT}={count}) whose file name does not end in "
                            f"-00001-of-{count:05d}.gguf, so its other parts cannot be found")
        expected = self.metadata.get(SPLIT_TENSORS)
        tensors = dict(self.tensors)
        for i in range(1, count):
            part_path = f"{m.group(1)}-{i + 1:05d}-of-{count:05d}.gguf"
            if not os.path.isfile(part_path):
                raise GGUFError(f"{self.path}: split part {i + 1} of {count} is missing ({part_path})")
            part = GGUFFile(part_path, _single=True)
            if part.metadata.get(SPLIT_NO) != i or part.metadata.get(SPLIT_COUNT) != count:
                raise GGUFError(f"{part_path}: {SPLIT_NO}={part.metadata.get(SPLIT_NO)!r}, "
                                f"{SPLIT_COUNT}={part.metadata.get(SPLIT_COUNT)!r}; expected part {i} of {count}")
            for name, info in part.tensors.items():
                if name in tensors:
                    raise GGUFError(f"{part_path}: tensor {name!r} is also in an earlier part")
                tensors[name] = TensorInfo(info.name, info.ggml_type, info.shape, info.offset, info.nbytes, i)
            self._mmaps.append(part._mmap)
            self.parts.append(part_path)
        if expected is not None and expected != len(tensors):
            raise GGUFError(f"{self.path}: {SPLIT_TENSORS}={expected} but the {count} parts hold {len(tensors)} "
                            "tensors (corrupted split model)")
        self.tensors = tensors

    def _parse(self) -> None:
        cur = _Cursor(self._buf, self.path)
        magic = bytes(self._buf[:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (bad magic {magic!r})")
        cur.pos = 4
        self.version = cur.u32("version")
        if self.version not in (2, 3):
            raise GGUFError(f"{self.path}: unsupported GGUF version {self.version}")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        if n_tensors > self.size or n_kv > self.size:
            raise GGUFError(f"{self.path}: corrupt GGUF header (tensor count {n_tensors}, kv count {n_kv})")
        metadata: dict[str, Any] = {}
        types: dict[str, tuple[int, int | None]] = {}
        for _ in range(n_kv):
            key = cur.string("metadata key")
            vtype = cur.u32(key)
            sub = None
            if vtype == _ARRAY:
                cur.need(4, key)
                (sub,) = struct.unpack_from("<I", self._buf, cur.pos)
            metadata[key] = cur.value(vtype, key)
            types[key] = (vtype, sub)
        self.metadata = metadata
        # key -> (GGUF value type, array element type or None): lets writers copy metadata type-exactly
        self.metadata_types = types
        alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        if alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"{self.path}: general.alignment must be a power of two, got {alignment}")
        self.alignment = alignment

        raw_infos = []
        for _ in range(n_tensors):
            name = cur.string("tensor name")
            n_dims = cur.u32(f"tensor {name} dims")
            if n_dims > 8:
                raise GGUFError(f"{self.path}: tensor {name!r} has {n_dims} dimensions")
            ne = [cur.u64(f"tensor {name} shape") for _ in range(n_dims)]
            ggml_type = cur.u32(f"tensor {name} type")
            offset = cur.u64(f"tensor {name} offset")
            raw_infos.append((name, ne, ggml_type, offset))
        data_start = (cur.pos + alignment - 1) // alignment * alignment
        self.data_offset = data_start

        tensors: dict[str, TensorInfo] = {}
        for name, ne, ggml_type, offset in raw_infos:
            n_el = 1
            for d in ne:
                n_el *= d
            if ggml_type in GGML_TYPES:
                _, block, tsize = GGML_TYPES[ggml_type]
                if ne and ne[0] % block:
                    raise GGUFError(
                        f"{self.path}: tensor {name!r} row length {ne[0]} is not a multiple of "
                        f"the {ggml_type_name(ggml_type)} block size {block}"
                    )
                nbytes = n_el // block * tsize
            else:
                nbytes = 0  # unknown type: size unknown; refused when the tensor is used
            start = data_start + offset
            if ggml_type in GGML_TYPES and start + nbytes > self.size:
                raise GGUFError(
                    f"{self.path}: truncated GGUF file (tensor {name!r} needs bytes {start}..{start + nbytes},"
                    f" file has {self.size})"
                )
            tensors[name] = TensorInfo(name, ggml_type, tuple(reversed(ne)), start, nbytes)
        self.tensors = tensors

    # -- access -----------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def tensor_bytes(self, name: str) -> np.ndarray:
        """Raw bytes of a tensor as a uint8 view of shape (n_rows..., bytes_per_row)."""
        info = self.tensors[name]
        if info.ggml_type not in GGML_TYPES:
            raise GGUFError(f"{self.path}: tensor {name!r} has unknown ggml type {info.ggml_type}")
        _, block, tsize = GGML_TYPES[info.ggml_type]
        arr = np.frombuffer(self._mmaps[info.part], dtype=np.uint8, count=info.nbytes, offset=info.offset)
        if not info.shape:
            return arr
        row_bytes = info.shape[-1] // block * tsize
        return arr.reshape(*info.shape[:-1], row_bytes)

    def tensor(self, name: str) -> np.ndarray:
        """Zero-copy view: float arrays for F32/F16/I* types, raw uint8 rows for quantized/BF16 types."""
        info = self.tensors[name]
        simple = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64, 28: np.float64}
        if info.ggml_type in simple:
            dt = np.dtype(simple[info.ggml_type]).newbyteorder("<")
            arr = np.frombuffer(self._mmaps[info.part], dtype=dt, count=info.n_elements, offset=info.offset)
            return arr.reshape(info.shape)
        if info.ggml_type == 30:  # BF16: return the raw uint16 words
            arr = np.frombuffer(self._mmaps[info.part], dtype="<u2", count=info.n_elements, offset=info.offset)
            return arr.reshape(info.shape)
        return self.tensor_bytes(name)

    def close(self) -> None:
        # numpy views may still reference the map; drop our references and let GC close it.
        self._buf.release() if hasattr(self._buf, "release") else None

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        pass
