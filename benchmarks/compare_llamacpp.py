"""Run llamacpy and llama.cpp (through llama-cpp-python) on the same GGUF in the same run; print the ratios.

Usage: python benchmarks/compare_llamacpp.py MODEL.gguf [-p 512] [-n 128] [-t 2] [-r 3]
Both engines take the same tests as `llamacpy bench`: ppN = N random tokens in one batch from an empty cache,
tgN = N single-token steps from an empty cache, one warm-up, then -r repetitions, alternating engines so that
load from other processes on this shared machine hits both alike. If `llama_cpp` is not importable it says so
and exits 0. (A local build: pip install --target DIR llama-cpp-python, then PYTHONPATH=DIR.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-r", type=int, default=3)
    a = ap.parse_args(argv)
    try:
        import llama_cpp
    except ImportError:
        print("llama_cpp (llama-cpp-python) is not installed: nothing to compare against.")
        return 0

    from llamacpy.model import LlamaModel

    n_ctx = max(a.p, a.n) + 8
    ours = LlamaModel.load(a.model, n_ctx=n_ctx, n_threads=a.t)
    ref = llama_cpp.Llama(model_path=a.model, n_ctx=n_ctx, n_batch=max(a.p, 1), n_ubatch=max(a.p, 1),
                          n_threads=a.t, n_threads_batch=a.t, verbose=False)
    rng = np.random.default_rng(0)
    n_vocab = ours.n_vocab

    def ours_pp():
        ours.kv.clear()
        toks = rng.integers(0, n_vocab, a.p).astype(np.int32)
        t0 = time.perf_counter()
        ours.forward(toks)
        return time.perf_counter() - t0

    def ours_tg():
        ours.kv.clear()
        toks = rng.integers(0, n_vocab, a.n).astype(np.int32)
        t0 = time.perf_counter()
        for i in range(a.n):
            ours.forward(toks[i:i + 1])
        return time.perf_counter() - t0

    def ref_pp():
        ref.reset()
        ref._ctx.memory_clear(True) if hasattr(ref._ctx, "memory_clear") else None
        toks = rng.integers(0, n_vocab, a.p).tolist()
        t0 = time.perf_counter()
        ref.eval(toks)
        return time.perf_counter() - t0

    def ref_tg():
        ref.reset()
        ref._ctx.memory_clear(True) if hasattr(ref._ctx, "memory_clear") else None
        toks = rng.integers(0, n_vocab, a.n).tolist()
        t0 = time.perf_counter()
        for tok in toks:
            ref.eval([tok])
        return time.perf_counter() - t0

    rows = []
    for name, n, f_ours, f_ref in (("pp", a.p, ours_pp, ref_pp), ("tg", a.n, ours_tg, ref_tg)):
        if n <= 0:
            continue
        f_ours(), f_ref()  # warm-up (JIT load, repack, page faults)
        t_o, t_r = [], []
        for _ in range(a.r):
            t_o.append(n / f_ours())
            t_r.append(n / f_ref())
        rows.append((f"{name}{n}", t_o, t_r))
    print(f"model {a.model}, {a.t} threads, {a.r} repetitions (alternating)")
    print("| test | llamacpy t/s | llama.cpp t/s | ratio |")
    print("|---|---:|---:|---:|")
    for test, t_o, t_r in rows:
        mo, mr = statistics.fmean(t_o), statistics.fmean(t_r)
        so = statistics.stdev(t_o) if len(t_o) > 1 else 0.0
        sr = statistics.stdev(t_r) if len(t_r) > 1 else 0.0
        print(f"| {test} | {mo:.2f} ± {so:.2f} | {mr:.2f} ± {sr:.2f} | {mo / mr:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
