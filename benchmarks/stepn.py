"""Whole-model decode steps of n one-token sequences (the server's batched step), small-batch GEMMs on vs off.

Usage: PYTHONPATH=src python benchmarks/stepn.py MODEL.gguf [THREADS] [--reps 12] [--ns 1,2,3,4,8] [--parts]
Loads MODEL with 8 sequences, gives each a 32-token prompt, then per n times forward_batch of n tokens (one per
sequence 0..n-1) with linear.SMALL_GEMM on and off in turn (same run, same load), best (min) and median ms of
--reps steps after 2 warm-ups each (and 4 untimed steps per n and mode first), the n values in turn every rep
(on a shared machine the best is the steadier figure). The ratio column is the issue-12 figure: the n-token step over the 1-token step.
With --parts (small GEMMs on only): where an n-token step goes -- the matmuls per matrix shape, attention over
the cache, the other per-layer kernels and the Python in between -- each part's best over the reps, the n
values timed in turn each rep (so a busy spell of the shared machine hits every n alike). With THREADS 1 the
clock is the process's CPU time (other jobs on the machine do not count), else wall time.
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
    ap.add_argument("--parts", action="store_true", help="time the parts of each step (small GEMMs on)")
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

    if a.parts:
        return parts(m, ns, a, rng)
    for n in ns:  # warm-up: the first steps after the prompts ran slow at 2 threads (~200 ms for a 30 ms step)
        for on in (True, False):
            linear.SMALL_GEMM = on
            for _ in range(4):
                step(n)
    # the n values in turn every rep (not all reps of one n, then the next): a busy spell of the shared machine
    # (one other busy process makes a 2-thread step several times slower for seconds) then hits every n alike
    ts = {n: {True: [], False: []} for n in ns}
    for it in range(a.reps + 2):
        for n in ns:
            for on in (True, False):
                linear.SMALL_GEMM = on
                t = step(n)
                if it >= 2:
                    ts[n][on].append(t)
    res = {n: {on: (float(np.min(v)) * 1e3, float(np.median(v)) * 1e3) for on, v in ts[n].items()} for n in ns}
    linear.SMALL_GEMM = True
    print(f"{a.model}, {a.threads} threads, ms per step of n one-token sequences, best (median) of {a.reps}")
    print("| n | small GEMMs | decode kernels | n-step / 1-step, best (GEMMs) | GEMMs / decode kernels, best |")
    print("|---:|---:|---:|---:|---:|")
    base = res[ns[0]][True][0]
    for n in ns:
        g, d = res[n][True], res[n][False]
        print(f"| {n} | {g[0]:.1f} ({g[1]:.1f}) | {d[0]:.1f} ({d[1]:.1f}) | {g[0] / base:.2f} | {g[0] / d[0]:.2f} |")
    return 0


def parts(m, ns, a, rng) -> int:
    """Per n: the step and its parts (best of --reps each), the n values in turn every rep."""
    import llamacpy.model as model_mod
    from llamacpy.kernels import ops

    clock = time.process_time if a.threads == 1 else time.perf_counter
    acc: dict = {}

    def timed(key_of, fn):
        def g(*args, **kw):
            t0 = clock()
            r = fn(*args, **kw)
            k = key_of(*args)
            acc[k] = acc.get(k, 0.0) + clock() - t0
            return r
        return g

    saved = {"apply_calls": model_mod.apply_calls}
    model_mod.apply_calls = timed(lambda lin, x, calls: f"mm {lin.n_out}x{lin.n_in}", model_mod.apply_calls)
    names = ("attention_paged", "rms_norm", "rope_inplace", "store_kv_paged", "swiglu", "add_inplace")
    for nm in names:
        saved[nm] = getattr(ops, nm)
        setattr(ops, nm, timed(lambda *args, nm=nm: "attention" if nm == "attention_paged" else "other kernels",
                               saved[nm]))
    try:
        def step(n):
            acc.clear()
            toks = rng.integers(0, 1000, n)
            pos = np.array([m.kv.n_used[s] for s in range(n)])
            t0 = clock()
            m.forward_batch(toks, pos, np.arange(n))
            d = dict(acc)
            d["step"] = clock() - t0
            return d

        for _ in range(4):
            for n in ns:
                step(n)
        res = {n: [] for n in ns}
        for _ in range(a.reps):
            for n in ns:
                res[n].append(step(n))
    finally:
        model_mod.apply_calls = saved.pop("apply_calls")
        for nm, f in saved.items():
            setattr(ops, nm, f)
    mm_keys = sorted({k for r in res[ns[0]] for k in r if k.startswith("mm ")})
    cols = ["step", "matmuls", *mm_keys, "attention", "other kernels", "python"]
    print(f"{a.model}, {a.threads} thread(s) ({'process CPU' if a.threads == 1 else 'wall'} time), ms per step of "
          f"n one-token sequences and its parts, best of {a.reps} each; matmuls / python at the best step")
    print("| n | " + " | ".join(cols) + " | step / 1-step |")
    print("|---:" * (len(cols) + 2) + "|")
    base = None
    for n in ns:
        rs = res[n]
        best = min(rs, key=lambda r: r["step"])
        mm = sum(v for k, v in best.items() if k.startswith("mm "))
        row = {"step": best["step"], "matmuls": mm,
               "python": best["step"] - sum(v for k, v in best.items() if k != "step")}
        for k in [*mm_keys, "attention", "other kernels"]:
            row[k] = min(r.get(k, 0.0) for r in rs)
        base = base or row["step"]
        print(f"| {n} | " + " | ".join(f"{row[c] * 1e3:.2f}" for c in cols) + f" | {row['step'] / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
