"""Prompt-path choice per type: Linear's decode kernel DECODE_MAX tokens a call (prompt_by_decode) vs the
f32-tile + sgemm path, on one matrix, same run.

Usage: python benchmarks/bench_prompt_by_decode.py [--types Q4_1,Q5_0,Q5_1,F16,BF16] [--shapes 5632x2048,2048x5632]
       [--tokens 64,512] [--threads 2] [--reps 3]
Prints GFLOP/s (2 * n_out * n_in * tokens / best time) for both paths and their ratio (decode / sgemm). On one
thread the times are process CPU time (as bench_simd.py: other jobs on a shared CPU do not count), else wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import NAMES, random_weights  # noqa: E402

from llamacpy.kernels import isa  # noqa: E402
from llamacpy.kernels import linear as L  # noqa: E402


def best(fn, reps, clock):
    fn()
    t = 1e9
    for _ in range(reps):
        t0 = clock()
        fn()
        t = min(t, clock() - t0)
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q4_1,Q5_0,Q5_1,F16,BF16")
    ap.add_argument("--shapes", default="5632x2048,2048x5632")
    ap.add_argument("--tokens", default="64,512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    L.set_num_threads(a.threads)
    clock = time.process_time if a.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    print(f"SIMD level {isa.level()}; threads {a.threads}")
    print("| type | shape | tokens | decode-kernel GFLOP/s | sgemm GFLOP/s | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for name in a.types.split(","):
        typ = NAMES[name]
        for shp in a.shapes.split(","):
            n_out, n_in = map(int, shp.split("x"))
            raw = random_weights(typ, n_out, n_in, rng).view(np.uint8).reshape(n_out, -1)
            lin = L.make_linear(typ, raw, (n_out, n_in), name)
            for n in map(int, a.tokens.split(",")):
                x = rng.standard_normal((n, n_in)).astype(np.float32)
                res = {}
                for by_decode in (True, False):
                    lin.prompt_by_decode = by_decode
                    res[by_decode] = 2.0 * n_out * n_in * n / best(lambda: lin(x), a.reps, clock) / 1e9
                print(f"| {name} | {shp} | {n} | {res[True]:.1f} | {res[False]:.1f} | {res[True] / res[False]:.2f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
