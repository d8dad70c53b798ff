"""Kernel micro-benchmark: matvec GB/s (weights read per second) and prompt-path GFLOP/s per type.

Usage: python benchmarks/bench_kernels.py [--types Q4_0,Q8_0,...] [--threads 1,2] [--shapes 5632x2048,32000x2048]
       [--pp 512] [--reps 20]
Several copies of each matrix are cycled (over 160 MB in all) so the weights come from DRAM, not the 32 MB L3,
as in a real decode step. The machine is shared and noisy: compare types within one run.
"""

from __future__ import annotations

import argparse
import sys
import time

import numba as nb
import numpy as np

from llamacpy.kernels import make_linear, set_num_threads
from llamacpy.kernels.common import BLOCK
from llamacpy.gguf_file import GGML_TYPES

NAMES = {v[0]: k for k, v in GGML_TYPES.items()}
SCALE_OFFSETS = {2: [0], 3: [0, 2], 6: [0], 7: [0, 2], 8: [0], 10: [80, 82], 11: [108], 12: [0, 2], 13: [0, 2],
                 14: [208]}



@nb.njit(fastmath=True, parallel=True, cache=True)
def read_sum(a):
    """A parallel sum over a 1-d array: the rate of a plain read of its bytes (the DRAM ceiling of a kernel)."""
    t = 0
    for i in nb.prange(a.shape[0]):
        t += a[i]
    return t


def random_weights(typ: int, n_out: int, n_in: int, rng) -> np.ndarray:
    """Random valid tensor data: float arrays for F32/F16/BF16, block rows with sane f16 scales otherwise."""
    if typ == 0:
        return rng.standard_normal((n_out, n_in), dtype=np.float32) * 0.02
    if typ == 1:
        return (rng.standard_normal((n_out, n_in), dtype=np.float32) * 0.02).astype(np.float16)
    if typ == 30:
        return ((rng.standard_normal((n_out, n_in), dtype=np.float32) * 0.02).view(np.uint32) >> 16).astype(np.uint16)
    bs, nbytes = BLOCK[typ]
    nb = n_in // bs
    raw = rng.integers(0, 256, (n_out, nb, nbytes), dtype=np.uint8)
    for o in SCALE_OFFSETS[typ]:
        d = (np.abs(rng.standard_normal((n_out, nb), dtype=np.float32)) * 0.002 + 1e-4).astype(np.float16)
        raw[:, :, o:o + 2] = d.view(np.uint8).reshape(n_out, nb, 2)
    return raw.reshape(n_out, nb * nbytes)


def bench(typ, n_out, n_in, threads, pp, reps, rng):
    w = random_weights(typ, n_out, n_in, rng)
    n_copies = max(1, int(np.ceil(160e6 / w.nbytes)))
    lins = [make_linear(typ, w.copy(), (n_out, n_in), f"w{i}") for i in range(n_copies)]
    x1 = rng.standard_normal((1, n_in), dtype=np.float32)
    t0 = time.perf_counter()
    for lin in lins:
        lin(x1)  # compiles (first type only) and repacks
    setup = time.perf_counter() - t0
    res = {}
    for th in threads:
        set_num_threads(th)
        y = np.empty((1, n_out), np.float32)
        best = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                for lin in lins:
                    lin(x1, out=y)
            best.append((time.perf_counter() - t0) / (reps * len(lins)))
        dt = min(best)
        gbs = w.nbytes / dt / 1e9
        xp = rng.standard_normal((pp, n_in), dtype=np.float32)
        lins[0](xp[:8])
        t0 = time.perf_counter()
        lins[0](xp)
        dtp = time.perf_counter() - t0
        res[th] = (dt * 1e6, gbs, 2.0 * pp * n_out * n_in / dtp / 1e9)
    return w.nbytes, setup / len(lins), res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="F32,F16,BF16,Q8_0,Q4_0,Q4_1,Q5_0,Q5_1,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--shapes", default="5632x2048,32000x2048")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args(argv)
    threads = [int(t) for t in a.threads.split(",")]
    rng = np.random.default_rng(0)
    print("| type | shape | MB | repack+first ms | " + " | ".join(
        f"t={t} matvec us | t={t} GB/s | t={t} pp{a.pp} GFLOP/s" for t in threads) + " |")
    print("|---" * (4 + 3 * len(threads)) + "|")
    for name in a.types.split(","):
        typ = NAMES[name.upper()]
        for shp in a.shapes.split(","):
            n_out, n_in = map(int, shp.split("x"))
            nbytes, setup, res = bench(typ, n_out, n_in, threads, a.pp, a.reps, rng)
            cells = " | ".join(f"{res[t][0]:.0f} | {res[t][1]:.1f} | {res[t][2]:.1f}" for t in threads)
            print(f"| {name} | {n_out}x{n_in} | {nbytes / 1e6:.1f} | {setup * 1e3:.0f} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
