"""Whole-model decode steps of n one-token sequences (the server's batched step), small-batch GEMMs on vs off.

Usage: PYTHONPATH=src python benchmarks/stepn.py MODEL.gguf [THREADS] [--reps 12] [--ns 1,2,3,4,8]
Loads MODEL with 8 sequences, gives each a 32-token prompt, then per n times forward_batch of n tokens (one per
sequence 0..n-1) with linear.SMALL_GEMM on and off in turn (same run, same load), best (min) and median ms of
--reps steps after 2 warm-ups each (and 4 untimed steps per n and mode first) (on a shared machine the best is the steadier figure). The ratio column is the issue-12 figure: the n-token step over the 1-token step.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llamacpy.kernels import linear
from llamacpy.model import LlamaModel


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("threads", nargs="?", type=int, default=2)
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--ns", default="1,2,3,4,8")
    a = ap.parse_args(argv)
    ns = [int(v) for v in a.ns.split(",")]
    m = LlamaModel.load(a.model, n_ctx=32 + 2 * (a.reps + 6) * len(ns) + 8, n_threads=a.threads, n_seq=8)
    rng = np.random.default_rng(0)
    for s in range(8):
        m.forward_batch(rng.integers(0, 1000, 32), np.arange(32), np.full(32, s))

    def step(n):
        toks = rng.integers(0, 1000, n)
        pos = np.array([m.kv.n_used[s] for s in range(n)])
        t0 = time.perf_counter()
        m.forward_batch(toks, pos, np.arange(n))
        return time.perf_counter() - t0

    for n in ns:  # warm-up: the first steps after the prompts ran slow at 2 threads (~200 ms for a 30 ms step)
        for on in (True, False):
            linear.SMALL_GEMM = on
            for _ in range(4):
                step(n)
    res = {}
    for n in ns:
        ts = {True: [], False: []}
        for it in range(a.reps + 2):
            for on in (True, False):
                linear.SMALL_GEMM = on
                t = step(n)
                if it >= 2:
                    ts[on].append(t)
        res[n] = {on: (float(np.min(v)) * 1e3, float(np.median(v)) * 1e3) for on, v in ts.items()}
    linear.SMALL_GEMM = True
    print(f"{a.model}, {a.threads} threads, ms per step of n one-token sequences, best (median) of {a.reps}")
    print("| n | small GEMMs | decode kernels | n-step / 1-step, best (GEMMs) | GEMMs / decode kernels, best |")
    print("|---:|---:|---:|---:|---:|")
    base = res[ns[0]][True][0]
    for n in ns:
        g, d = res[n][True], res[n][False]
        print(f"| {n} | {g[0]:.1f} ({g[1]:.1f}) | {d[0]:.1f} ({d[1]:.1f}) | {g[0] / base:.2f} | {g[0] / d[0]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
