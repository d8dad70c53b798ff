"""Where one decode step's time goes: a perf_counter_ns breakdown of LlamaModel.forward on one token.

    python benchmarks/profile_decode.py -m /tmp/rg/tl-Q4_0.gguf [-m ...] [-t 1,2] [-n 32] [--ctx 64]

Per file and thread count: the plain (uninstrumented) ms/token first, then the same steps with wrappers put
around the model's callees (nothing in the library is edited: the wrappers replace module attributes for the
run and are removed after). Rows:
    matmul kernels (linear._run_kernel: the kernel call and its entry-point check), per matrix role (wqkv, wo,
        gate_up, down, output) and kernel: time, weight bytes read and GB/s, next to the GB/s of a parallel numba
        sum over the same arrays, in the same order (the DRAM ceiling);
    activations (quantize + the SIMD kernels' layout, one call), rounding (F16/BF16 activations), the
        Linear-dispatch glue (Linear/FusedLinear/batch.apply minus the timed calls inside), split copies,
    the element-wise ops (rms_norm, rope, store_kv, attention, add, swiglu), embedding rows,
    "model glue": forward's wall time minus everything above (model._forward's own Python).
The wrappers cost ~1 us each (a few hundred a token): "instrumented total" vs "plain" shows it.
Must not: be imported by the library.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import read_sum  # noqa: E402

from llamacpy import model as M  # noqa: E402
from llamacpy.kernels import kquants_simd, legacy_simd, linear, ops, q8  # noqa: E402

ns = time.perf_counter_ns


class Prof:
    def __init__(self):
        self.t = defaultdict(int)       # key -> ns
        self.calls = defaultdict(int)
        self.bytes = defaultdict(int)   # kernel key -> weight bytes
        self.weights = []               # (key, arrays) of each kernel call, in call order (one step)
        self.role = "?"
        self.nest = 0                   # ns spent in timed callees of the current Linear call
        self.saved = []

    def patch(self, obj, name, key):
        orig = getattr(obj, name)
        prof = self

        def wrap(*a, **k):
            t0 = ns()
            r = orig(*a, **k)
            dt = ns() - t0
            prof.t[key] += dt
            prof.calls[key] += 1
            prof.nest += dt
            return r

        self.saved.append((obj, name, orig))
        setattr(obj, name, wrap)

    def restore(self):
        for obj, name, orig in reversed(self.saved):
            if isinstance(obj, dict):
                obj[name] = orig
            else:
                setattr(obj, name, orig)
        self.saved.clear()


def instrument(model, prof):
    roles = {}
    for L in model.layers:
        roles[id(L.wqkv)] = "wqkv"
        roles[id(L.wo)] = "wo"
        roles[id(L.w_gate_up)] = "gate_up"
        roles[id(L.w_down)] = "down"
    roles[id(model.output)] = "output"
    orig_apply = M.apply_calls

    def apply(lin, x, calls):
        prof.role = roles.get(id(lin), "?")
        nest0 = prof.nest
        t0 = ns()
        r = orig_apply(lin, x, calls)
        dt = ns() - t0
        inner = prof.nest - nest0
        prof.t["linear dispatch glue"] += dt - inner
        prof.nest = nest0 + dt
        return r

    prof.saved.append((M, "apply_calls", orig_apply))
    M.apply_calls = apply
    for name in ("rms_norm", "rope_inplace", "store_kv_paged", "attention_paged", "add_inplace", "swiglu"):
        prof.patch(ops, name, name)
    prof.patch(q8, "quantize_q8_0", "quantize (q8.py, generic path)")
    prof.patch(q8, "quantize_q8_k", "quantize (q8.py, generic path)")
    prof.patch(legacy_simd, "activations", "activations: quantize + layout")
    prof.patch(kquants_simd, "activations", "activations: quantize + layout")
    prof.patch(linear, "f16_round", "round activations f16/bf16")
    prof.patch(linear, "bf16_round", "round activations f16/bf16")
    prof.patch(linear.FusedLinear, "split", "split copies")
    orig_run = linear._run_kernel

    def run_kernel(owner, weights, fn, act, out, pre=()):
        t0 = ns()
        orig_run(owner, weights, fn, act, out, pre)
        dt = ns() - t0
        kk = f"{prof.role}:{fn.__name__}" + (f"{pre}" if pre else "")
        prof.t[kk] += dt
        prof.calls[kk] += 1
        prof.nest += dt
        prof.bytes[kk] += sum(a.nbytes for a in weights)
        if prof.record:
            prof.weights.append((kk, list(weights)))

    prof.saved.append((linear, "_run_kernel", orig_run))
    linear._run_kernel = run_kernel
    prof.patch(model.tok_embd, "get_rows", "embedding rows")


def steps(model, n, tok0=1):
    """n decode steps (one token each) from the cache as it is; returns ns per step."""
    t0 = ns()
    for i in range(n):
        model.forward(np.array([(tok0 + 7 * i) % 1000 + 10]))
    return (ns() - t0) / n


def read_bw(weights):
    """GB/s of numba sums over each kernel call's weight arrays, in the call order of one step, per key."""
    t, b = defaultdict(int), defaultdict(int)
    flat = [(k, [a.reshape(-1).view(np.uint8)[: a.nbytes // 8 * 8].view(np.uint64) for a in arrs])
            for k, arrs in weights]
    for _ in range(2):  # first pass: warm-up (page table, jit); second timed
        t.clear(), b.clear()
        for k, arrs in flat:
            t0 = ns()
            for a in arrs:
                read_sum(a)
            t[k] += ns() - t0
            b[k] += sum(a.nbytes for a in arrs)
    return {k: b[k] / t[k] for k in t}


def profile(path, threads, n, ctx):
    model = M.LlamaModel.load(path, n_ctx=ctx + n * 3 + 16, n_threads=threads)
    model.forward(np.arange(1, 9))  # 8-token prompt: builds the repacks, compiles
    steps(model, 4)
    plain = steps(model, n)
    prof = Prof()
    prof.record = False
    instrument(model, prof)
    try:
        steps(model, 2)  # wrappers warm
        prof.t.clear(), prof.calls.clear(), prof.bytes.clear()
        prof.record = True
        t0 = ns()
        model.forward(np.array([5]))
        one = ns() - t0
        prof.record = False
        weights = prof.weights
        prof.t.clear(), prof.calls.clear(), prof.bytes.clear()
        t0 = ns()
        for i in range(n):
            model.forward(np.array([(3 + 7 * i) % 1000 + 10]))
        total = (ns() - t0) / n
    finally:
        prof.restore()
    plain2 = steps(model, n)
    rb = read_bw(weights)
    del one
    return model, plain, plain2, total, {k: v / n for k, v in prof.t.items()}, \
        {k: v / n for k, v in prof.calls.items()}, {k: v / n for k, v in prof.bytes.items()}, rb


def smaps_summary():
    """(Rss, FilePmdMapped, AnonHugePages) MB summed over this process's file mappings of more than 1 MB, per
    file name (the GGUF, the repack-cache entries): whether the weights sit on 2 MiB pages."""
    agg = defaultdict(lambda: [0, 0, 0])
    cur = None
    try:
        with open("/proc/self/smaps") as f:
            for ln in f:
                parts = ln.split()
                if len(parts) >= 5 and "-" in parts[0] and ":" not in parts[0]:
                    cur = Path(parts[-1]).name if len(parts) >= 6 and parts[-1].startswith("/") else None
                    if cur and ".gguf" not in cur and "repack" not in parts[-1] and "/rc/" not in parts[-1]:
                        cur = None
                    if cur and ("repack" in parts[-1] or "/rc/" in parts[-1]):
                        cur = "repack-cache entries"
                elif cur and parts[0] in ("Rss:", "FilePmdMapped:", "AnonHugePages:"):
                    agg[cur][("Rss:", "FilePmdMapped:", "AnonHugePages:").index(parts[0])] += int(parts[1])
    except OSError:
        return {}
    return {k: tuple(v / 1024 for v in vals) for k, vals in agg.items()}


def report(path, threads, res):
    model, plain, plain2, total, t, calls, nbytes, rb = res
    print(f"\n### {Path(path).name}, {threads} thread(s): plain {plain / 1e6:.2f} / {plain2 / 1e6:.2f} ms/token "
          f"(before / after), instrumented {total / 1e6:.2f} ms/token; load {os.getloadavg()[0]:.2f}")
    for k, (rss, pmd, anon) in smaps_summary().items():
        print(f"mapping {k}: Rss {rss:.0f} MB, FilePmdMapped {pmd:.0f} MB, AnonHugePages {anon:.0f} MB")
    print("| part | calls/token | ms/token | % | weight MB | GB/s | read GB/s (same bytes) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    accounted = sum(t.values())
    t = dict(t)
    t["model glue (_forward's own Python)"] = total - accounted
    kern = {k for k in t if k in nbytes}
    ksum = sum(t[k] for k in kern)
    kbytes = sum(nbytes[k] for k in kern)
    for k in sorted(t, key=lambda k: -t[k]):
        v = t[k]
        row = f"| {k} | {calls.get(k, 0):.0f} | {v / 1e6:.3f} | {100 * v / total:.1f} |"
        if k in nbytes:
            row += f" {nbytes[k] / 1e6:.1f} | {nbytes[k] / v:.1f} | {rb.get(k, float('nan')):.1f} |"
        else:
            row += " | | |"
        print(row)
    print(f"| **all matmul kernels** | | {ksum / 1e6:.3f} | {100 * ksum / total:.1f} | {kbytes / 1e6:.1f} | "
          f"{kbytes / ksum:.1f} | |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", action="append", required=True)
    ap.add_argument("-t", "--threads", default="2", help="comma list, e.g. 1,2")
    ap.add_argument("-n", type=int, default=32, help="decode steps timed")
    ap.add_argument("--ctx", type=int, default=64)
    a = ap.parse_args(argv)
    for path in a.model:
        for th in [int(x) for x in a.threads.split(",")]:
            report(path, th, profile(path, th, a.n, a.ctx))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
