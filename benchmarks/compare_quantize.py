"""Time `llamacpy quantize` against llama.cpp's quantizer (llama-cpp-python's `llama_model_quantize`) on the same
input, in the same run, alternating; print the ratio.

Usage: python benchmarks/compare_quantize.py IN-F16.gguf [--type Q4_0] [-t 2] [-r 2] [--outdir DIR]
Each side runs in its own process (as a user would run each tool). If `llama_cpp` is not importable, only
llamacpy is timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

# llama.cpp's LLAMA_FTYPE_MOSTLY_* ids (llama.h)
FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12,
          "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18}

LLAMA_CPP_SNIPPET = """
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.nthread = int(sys.argv[4]); p.ftype = int(sys.argv[3])
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p)
sys.exit(rc)
"""


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--type", default="Q4_0", choices=sorted(FTYPES))
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--reps", type=int, default=2)
    ap.add_argument("--outdir", default=None)
    args = ap.parse_args()
    try:
        import llama_cpp  # noqa: F401

        have_ref = True
    except ImportError:
        have_ref = False
        print("llama_cpp (llama-cpp-python) is not installed: timing llamacpy only")
    outdir = args.outdir or tempfile.mkdtemp(prefix="quantize-bench-")
    ours_out, ref_out = os.path.join(outdir, "ours.gguf"), os.path.join(outdir, "ref.gguf")
    ours_cmd = [sys.executable, "-m", "llamacpy", "quantize", args.model, ours_out, args.type, "-t", str(args.threads)]
    ref_cmd = [sys.executable, "-c", LLAMA_CPP_SNIPPET, args.model, ref_out, str(FTYPES[args.type]), str(args.threads)]
    timed(ours_cmd)  # warm-up: JIT cache, page cache
    ours, ref = [], []
    for _ in range(args.reps):
        ours.append(timed(ours_cmd))
        if have_ref:
            ref.append(timed(ref_cmd))
    size = os.path.getsize(args.model) / 2**20
    print(f"{args.model} ({size:.0f} MiB) -> {args.type}, {args.threads} threads, {args.reps} repetitions")
    print(f"llamacpy quantize: {statistics.mean(ours):.2f} s (runs: {', '.join(f'{x:.2f}' for x in ours)})")
    if have_ref:
        print(f"llama.cpp quantize: {statistics.mean(ref):.2f} s (runs: {', '.join(f'{x:.2f}' for x in ref)})")
        print(f"ratio (llamacpy / llama.cpp time): {statistics.mean(ours) / statistics.mean(ref):.2f}")
        same = open(ours_out, "rb").read() == open(ref_out, "rb").read()
        print(f"output files identical: {same}")
    for p in (ours_out, ref_out):
        if os.path.exists(p):
            os.unlink(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
