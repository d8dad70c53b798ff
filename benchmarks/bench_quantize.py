"""Benchmark quantization speed: F16 weights -> Q4_0 and Q4_K (or any types), in MB/s of F16 input.

Two modes:
  python benchmarks/bench_quantize.py                     # random F16 matrices shaped like TinyLlama-1.1B layers
  python benchmarks/bench_quantize.py --layers 22         # the whole 1.1B-shaped weight set (about 2 GB of F16)
  python benchmarks/bench_quantize.py --gguf MODEL.gguf   # the real `llamacpy quantize` on a file (Q4_0, Q4_K_M)

Random mode times exactly what `llamacpy quantize` does per tensor (`quantize.convert_rows`: F16 -> F32 in
row chunks, then the reference quantizer), without file I/O. Run with -t 1 and -t 2 (see DESIGN.md: always benchmark both).
Must not: be imported by the package.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

# TinyLlama-1.1B: dim 2048, FFN 5632, 32 heads / 4 KV heads (head dim 64), vocab 32000
LAYER_SHAPES = [(2048, 2048), (256, 2048), (256, 2048), (2048, 2048), (5632, 2048), (5632, 2048), (2048, 5632)]


def _set_threads(n: int | None) -> int:
    import numba

    if n:
        numba.set_num_threads(n)
    return numba.get_num_threads()


def bench_random(types: list[str], layers: int, seed: int) -> None:
    from llamacpy import quants as Q
    from llamacpy.quantize import convert_rows  # exactly the command's per-tensor path

    rng = np.random.default_rng(seed)
    shapes = LAYER_SHAPES * layers + [(32000, 2048)] * (1 if layers >= 22 else 0)
    mats = [(rng.standard_normal(s, dtype=np.float32) * np.float32(0.02)).astype(np.float16) for s in shapes]
    total = sum(m.nbytes for m in mats)
    print(f"{len(mats)} F16 matrices, {total / 1e6:.0f} MB, {_set_threads(None)} threads")
    for name in types:
        t = Q.TYPE_BY_NAME[name]
        Q.quantize(mats[0][:4].astype(np.float32), t)  # compile / load the cached kernel first
        t0 = time.perf_counter()
        out_bytes = 0
        for m in mats:
            out_bytes += convert_rows(m.view(np.uint8), Q.F16, m.shape[1], t).nbytes
        dt = time.perf_counter() - t0
        print(f"  F16 -> {name:5s} {dt:7.2f} s  {total / dt / 1e6:8.1f} MB/s F16 in  ({out_bytes / 1e6:.0f} MB out)")


def bench_gguf(path: str, types: list[str]) -> None:
    from llamacpy.quantize import Options, parse_ftype, quantize_file

    size = os.path.getsize(path)
    print(f"{path}: {size / 1e6:.0f} MB, {_set_threads(None)} threads")
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path)) or ".") as tmp:
        for name in types:
            ft = parse_ftype(name)
            s = quantize_file(path, os.path.join(tmp, f"out-{ft.name}.gguf"), Options(ft), progress=False,
                              log=lambda m: None)
            print(f"  -> {ft.name:7s} {s['seconds']:7.2f} s  {s['size_in'] / s['seconds'] / 1e6:8.1f} MB/s in  "
                  f"({s['size_out'] / 1e6:.0f} MB out)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gguf", help="quantize this GGUF file with the real command path")
    p.add_argument("--types", default=None, help="comma-separated (default Q4_0,Q4_K; for --gguf Q4_0,Q4_K_M)")
    p.add_argument("--layers", type=int, default=2, help="random mode: number of 1.1B-shaped layers (22 = all)")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    _set_threads(a.threads)
    if a.gguf:
        bench_gguf(a.gguf, (a.types or "Q4_0,Q4_K_M").split(","))
    else:
        bench_random((a.types or "Q4_0,Q4_K").split(","), a.layers, a.seed)


if __name__ == "__main__":
    main()
