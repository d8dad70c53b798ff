"""GGUF fixtures for chat tests: a copy of a model with `tokenizer.chat_template` (or other keys) added."""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFValueType as VT

from llamacpy.gguf_file import GGUFFile
from llamacpy.gguf_writer import KV, TensorSpec, copy_kvs, write_gguf


def copy_with_keys(src: Path, dst: Path, extra: dict[str, str]) -> Path:
    """Rewrite `src` to `dst` with string metadata `extra` added (or replaced); tensors copied byte for byte."""
    f = GGUFFile(src)
    kvs = [kv for kv in copy_kvs(f) if kv.key not in extra]
    kvs += [KV(k, v, VT.STRING) for k, v in extra.items()]
    specs = [TensorSpec(t.name, t.shape, t.ggml_type, (lambda name=t.name: f.tensor_bytes(name)))
             for t in f.tensors.values()]
    write_gguf(dst, kvs, specs)
    f.close()
    return dst


def with_chat_template(src: Path, dst: Path, template: str) -> Path:
    return copy_with_keys(src, dst, {"tokenizer.chat_template": template})
