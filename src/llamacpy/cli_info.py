"""`llamacpy info MODEL`: print a GGUF file's metadata and tensor table, like gguf-dump.

Owns: formatting only (long arrays abbreviated). Must not: load the model's weights.
"""

from __future__ import annotations

import argparse

import numpy as np

from .gguf_file import GGUFFile

_VTYPE_NAMES = {0: "UINT8", 1: "INT8", 2: "UINT16", 3: "INT16", 4: "UINT32", 5: "INT32", 6: "FLOAT32", 7: "BOOL",
                8: "STRING", 9: "ARRAY", 10: "UINT64", 11: "INT64", 12: "FLOAT64"}


def _fmt_value(value, limit: int = 8) -> str:
    if isinstance(value, np.ndarray):
        items = value[:limit].tolist()
        more = len(value) > limit
        return "[" + ", ".join(repr(v) for v in items) + (", ..." if more else "") + "]"
    if isinstance(value, list):
        more = len(value) > limit
        return "[" + ", ".join(repr(v) for v in value[:limit]) + (", ..." if more else "") + "]"
    if isinstance(value, str):
        return repr(value if len(value) <= 120 else value[:117] + "...")
    return repr(value)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="llamacpy info", description="Dump a GGUF file's metadata and tensors.")
    p.add_argument("model")
    p.add_argument("--no-tensors", action="store_true", help="metadata only")
    args = p.parse_args(argv)
    g = GGUFFile(args.model)
    from .kernels import isa, repack_cache

    print(f"* File: {g.path} (GGUF v{g.version}, {g.size} bytes)")
    print(f"* Kernels: SIMD level {isa.describe()}")
    print(f"* Repack cache: {repack_cache.describe()}")
    print(f"* Dumping {len(g.metadata)} key/value pair(s)")
    for i, (key, value) in enumerate(g.metadata.items(), 1):
        vtype, sub = g.metadata_types[key]
        tname = _VTYPE_NAMES.get(vtype, str(vtype))
        if sub is not None:
            tname = f"[{_VTYPE_NAMES.get(sub, str(sub))}]"
        n = len(value) if isinstance(value, (list, np.ndarray)) else 1
        print(f"  {i:5d}: {tname:10s} | {n:8d} | {key} = {_fmt_value(value)}")
    if not args.no_tensors:
        print(f"* Dumping {len(g.tensors)} tensor(s)")
        for i, t in enumerate(g.tensors.values(), 1):
            ne = list(reversed(t.shape))
            shape = ", ".join(f"{d:5d}" for d in ne + [1] * (4 - len(ne)))
            print(f"  {i:5d}: {t.n_elements:10d} | {shape} | {t.type_name:7s} | {t.name}")
    return 0
