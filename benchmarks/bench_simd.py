"""Decode kernels per SIMD level vs the generic kernels vs a plain read of the same bytes, in one run.

Usage: python benchmarks/bench_simd.py [--types Q4_0,Q8_0,Q4_K,Q6_K,Q5_K,Q3_K,Q2_K,F16,BF16,Q4_1,Q5_0,Q5_1]
       [--shapes 5632x2048,256x2048]
       [--levels avx512vnni,avxvnni,avx2] [--threads 1] [--reps 7] [--rounds 2]
GB/s = bytes of the file's blocks for the matrix / best time of one matvec (one token). Copies of the matrix are
cycled (over 160 MB in all) so the weights come from DRAM, unless the shape is small enough that one copy fits
in L2 (then it is the compute ceiling). "read" is a parallel numba sum over the same raw bytes (uint64), the
memory ceiling of this run. On one thread the times are process CPU time (time.process_time), so that a CPU
shared with other jobs does not count their time against ours; on more threads, wall time.
Levels the CPU lacks are left out. F16/BF16: "generic" is dense.mv_half (numba auto-vectorised), the levels
dense_simd.mv_half.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numba as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import NAMES, random_weights, read_sum  # noqa: E402

from llamacpy.kernels import dense, dense_simd, isa, kquants, kquants_simd, legacy, legacy_simd, q8, simd  # noqa: E402
from llamacpy.kernels.common import bf16_round, f16_round  # noqa: E402
from llamacpy.kernels import linear as L  # noqa: E402


def _timed(calls, reps, rounds, clock):
    best = {k: 1e9 for k in calls}
    for _ in range(rounds):  # interleaved rounds: a burst of load from other jobs hits every variant
        for k, fn in calls.items():
            fn()
            for _ in range(reps):
                t0 = clock()
                fn()
                best[k] = min(best[k], clock() - t0)
    return best


def run_half(typ, n_out, n_in, levels, reps, rounds, clock, rng):
    bf = typ == 30
    x = rng.standard_normal((1, n_in)).astype(np.float32)
    x = bf16_round(x) if bf else f16_round(x)
    w = random_weights(typ, n_out, n_in, rng).view(np.uint16)
    ncopy = 1 if w.nbytes < 1 << 20 else max(2, int(np.ceil(160e6 / w.nbytes)))
    raws = [w] + [random_weights(typ, n_out, n_in, rng).view(np.uint16) for _ in range(ncopy - 1)]
    flat = [r.reshape(-1).view(np.uint64) for r in raws]
    y = np.empty((1, n_out), np.float32)
    kind = dense.KIND_BF16 if bf else dense.KIND_F16
    calls = {"generic": lambda: [dense.mv_half(r, kind, x, y) for r in raws], "read": lambda: [read_sum(f) for f in flat]}
    for lv in levels:
        ws, tok = [dense_simd.weights(r, bf) for r in raws], simd.token(lv)
        calls[lv] = (lambda ws=ws, tok=tok: [dense_simd.mv_half(tok, r, x, y) for r in ws])
    best = _timed(calls, reps, rounds, clock)
    return {k: ncopy * w.nbytes / v / 1e9 for k, v in best.items()}, ncopy


def run(typ, n_out, n_in, levels, reps, rounds, clock, rng):
    if typ in (1, 30):
        return run_half(typ, n_out, n_in, levels, reps, rounds, clock, rng)
    kq = typ >= 10
    mod = kquants_simd if kq else legacy_simd
    x = rng.standard_normal((1, n_in)).astype(np.float32)
    qa = q8.quantize_q8_k(x) if kq else q8.quantize_q8_0(x)
    w = random_weights(typ, n_out, n_in, rng)
    ncopy = 1 if w.nbytes < 1 << 20 else max(2, int(np.ceil(160e6 / w.nbytes)))
    raws = [w] + [random_weights(typ, n_out, n_in, rng) for _ in range(ncopy - 1)]
    R = L.group_rows(typ, [n_out])
    gen = [(kquants if kq else legacy).repack(typ, r, n_out, n_in, R) for r in raws]
    packs = {lv: [mod.repack_rows(typ, r, n_out, n_in, lv) for r in raws] for lv in levels}
    flat = [r.reshape(-1).view(np.uint64) for r in raws]
    y = np.empty((1, n_out), np.float32)
    calls = {"generic": lambda: [L._MV[typ](*p, *qa, y) for p in gen], "read": lambda: [read_sum(f) for f in flat]}
    for lv in levels:
        act, tok = mod.prep(typ, lv, *qa[:3]), simd.token(lv)
        calls[lv] = (lambda act=act, tok=tok, lv=lv: [mod.MV[typ](tok, *p, *act, y) for p in packs[lv]])
    best = _timed(calls, reps, rounds, clock)
    return {k: ncopy * w.nbytes / v / 1e9 for k, v in best.items()}, ncopy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q4_0,Q8_0,Q4_K,Q6_K,Q5_K,Q3_K,Q2_K")
    ap.add_argument("--shapes", default="5632x2048,256x2048")
    ap.add_argument("--levels", default="avx512vnni,avxvnni,avx2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    nb.set_num_threads(a.threads)
    levels = [lv for lv in a.levels.split(",") if lv in isa.available()]
    clock = time.process_time if a.threads == 1 else time.perf_counter
    print(f"CPU {isa.host_cpu_name()}, levels available: {', '.join(isa.available())}; threads {a.threads}")
    cols = levels + ["generic", "read"]
    print("| type | shape | copies | " + " | ".join(f"{c} GB/s" for c in cols) + " |")
    print("|---" * (3 + len(cols)) + "|")
    rng = np.random.default_rng(0)
    for name in a.types.split(","):
        for shp in a.shapes.split(","):
            n_out, n_in = map(int, shp.split("x"))
            res, ncopy = run(NAMES[name], n_out, n_in, levels, a.reps, a.rounds, clock, rng)
            print(f"| {name} | {shp} | {ncopy} | " + " | ".join(f"{res[c]:.1f}" for c in cols) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
