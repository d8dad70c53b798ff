"""Where a pp512 forward spends its non-matmul time: wall time of the prompt attention (split into the K/V
gather, the softmax and the rest: the two sgemms and the Q/O copies), the decode-kernel attention, SwiGLU,
RMSNorm, RoPE and the whole forward, by wrapping the kernels/ops.py entry points the model calls.

Usage: PYTHONPATH=src python benchmarks/profile_prompt_ops.py MODEL.gguf [-p 512] [-t 2] [-r 2]
One unmeasured warm-up forward (compiles), then -r measured ones; prints the best repetition per item (wall
time, and the forward's process CPU time: on a shared VM a 1-thread run's CPU time is the steadier figure).
Owns: the timing wrappers. Must not: change what the model computes.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

from llamacpy.kernels import ops, set_num_threads
from llamacpy.model import KVCache, LlamaModel

_times: dict[str, float] = defaultdict(float)


def _wrap(owner, name: str, label: str) -> None:
    f = getattr(owner, name)

    def timed(*a, **k):
        t0 = time.perf_counter()
        r = f(*a, **k)
        _times[label] += time.perf_counter() - t0
        return r

    setattr(owner, name, timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-r", type=int, default=2)
    a = ap.parse_args()
    m = LlamaModel.load(a.model, n_ctx=a.p, n_threads=a.t)
    set_num_threads(a.t)
    # attention_blas's jobs look _softmax_causal_f16 up as a module global: wrapping it in ops times it inside
    # (summed over the worker threads: with t threads up to t x its wall share)
    for owner, name, label in [(ops, "attention", "attention (prompt, all)"),
                               (ops, "_softmax_causal_f16", "  softmax (thread-sum)"),
                               (KVCache, "gather", "kv gather (prompt)"), (ops, "attention_paged", "attention_paged"),
                               (ops, "swiglu", "swiglu"), (ops, "rms_norm", "rms_norm"),
                               (ops, "rope_inplace", "rope"), (ops, "add_inplace", "add")]:
        _wrap(owner, name, label)
    toks = np.random.default_rng(0).integers(0, m.cfg.n_vocab, a.p).astype(np.int32)
    best: dict[str, float] = {}
    for rep in range(a.r + 1):
        m.kv.clear()
        _times.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        m.forward(toks, np.arange(a.p, dtype=np.int32))
        _times["forward (total)"] = time.perf_counter() - t0
        _times["forward CPU time (all threads)"] = time.process_time() - c0  # less noisy than wall on a busy VM
        if rep:  # rep 0 is the warm-up
            for k, v in _times.items():
                best[k] = min(best.get(k, np.inf), v)
    tot = best["forward (total)"]
    print(f"{a.model}  pp{a.p}  {a.t} threads  best of {a.r}")
    for k, v in sorted(best.items(), key=lambda kv: -kv[1]):
        print(f"  {k:26s} {v * 1e3:9.1f} ms  {100 * v / tot:5.1f}%")
    print(f"  pp{a.p}: {a.p / tot:.1f} t/s")


if __name__ == "__main__":
    main()
