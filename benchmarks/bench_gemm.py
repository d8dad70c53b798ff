"""Prompt GEMMs (kernels/gemm_simd.py) vs the decode kernels 8 tokens a call, per SIMD level, in one run.

Usage: python benchmarks/bench_gemm.py [--types Q4_0,Q8_0,Q4_K,Q6_K] [--shape 5632x2048] [--tokens 16,64,512]
       [--levels avx512vnni,avxvnni,avx2] [--threads 1] [--reps 3]
GOP/s = 2 * n_out * n_in * tokens / best time of one call (activations already quantized and prepared, as the
model shares them between q/k/v and gate/up). "decode8" is what prompts took before the GEMMs
(Linear.prompt_by_decode: the decode kernel on 8-token slices). On one thread the times are process CPU time
(time.process_time), so other jobs on a shared CPU do not count against us; on more threads, wall time.
Levels the CPU lacks are left out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numba as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import NAMES, random_weights  # noqa: E402

from llamacpy.kernels import gemm_simd, isa, kquants_simd, legacy_simd, q8, simd  # noqa: E402


def run(typ, n_out, n_in, n, lv, reps, clock, rng):
    kq = typ >= 10
    mod = kquants_simd if kq else legacy_simd
    packed = mod.repack_rows(typ, random_weights(typ, n_out, n_in, rng), n_out, n_in, lv)
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    act = mod.prep(typ, lv, *(q8.quantize_q8_k(x)[:3] if kq else q8.quantize_q8_0(x)[:2]))
    tok = simd.token(lv)
    y = np.empty((n, n_out), np.float32)

    def decode8():
        for a in range(0, n, 8):
            mod.MV[typ](tok, *packed, *[v[a:a + 8] for v in act], y[a:a + 8])

    def gemm():
        gemm_simd.GEMM[typ](tok, *packed, *act, y)

    res = {}
    for name, fn in (("decode8", decode8), ("gemm", gemm)):
        fn()
        best = 1e9
        for _ in range(reps):
            t0 = clock()
            fn()
            best = min(best, clock() - t0)
        res[name] = 2.0 * n_out * n_in * n / best / 1e9
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q4_0,Q8_0,Q4_K,Q6_K")
    ap.add_argument("--shape", default="5632x2048")
    ap.add_argument("--tokens", default="16,64,512")
    ap.add_argument("--levels", default="avx512vnni,avxvnni,avx2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    nb.set_num_threads(a.threads)
    n_out, n_in = (int(v) for v in a.shape.split("x"))
    levels = [lv for lv in a.levels.split(",") if lv in isa.available()]
    clock = time.process_time if a.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    print(f"CPU {isa.host_cpu_name()}; shape {n_out}x{n_in}; threads {a.threads}")
    print("| type | level | tokens | decode8 GOP/s | gemm GOP/s | gemm/decode8 |")
    print("|---|---|---:|---:|---:|---:|")
    for name in a.types.split(","):
        for lv in levels:
            for n in (int(v) for v in a.tokens.split(",")):
                r = run(NAMES[name], n_out, n_in, n, lv, a.reps, clock, rng)
                print(f"| {name} | {lv} | {n} | {r['decode8']:.0f} | {r['gemm']:.0f} | "
                      f"{r['gemm'] / r['decode8']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
