"""Test helper: split a GGUF into parts as llama.cpp's gguf-split does (--split-max-tensors)."""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFValueType as VT

from llamacpy.gguf_file import GGUFFile
from llamacpy.gguf_writer import KV, TensorSpec, copy_kvs, write_gguf


def split_gguf(src: Path, prefix: Path, n_parts: int, tensors_count: int | None = None) -> list[Path]:
    """PREFIX-0000i-of-0000N.gguf: the first part holds all metadata; every part carries split.no (u16),
    split.count (u16) and split.tensors.count (i32); tensors in file order, spread evenly over the parts."""
    f = GGUFFile(src)
    names = list(f.tensors)
    per = -(-len(names) // n_parts)
    paths = []
    for i in range(n_parts):
        kvs = copy_kvs(f) if i == 0 else []
        kvs += [KV("split.no", i, VT.UINT16), KV("split.count", n_parts, VT.UINT16),
                KV("split.tensors.count", len(names) if tensors_count is None else tensors_count, VT.INT32)]
        specs = [TensorSpec(n, f.tensors[n].shape, f.tensors[n].ggml_type, lambda n=n: f.tensor(n))
                 for n in names[i * per:(i + 1) * per]]
        path = Path(f"{prefix}-{i + 1:05d}-of-{n_parts:05d}.gguf")
        write_gguf(path, kvs, specs, require_arch=False)
        paths.append(path)
    return paths
