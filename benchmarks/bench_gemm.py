"""Prompt GEMMs (kernels/gemm_simd.py) vs the decode kernels 8 tokens a call, per SIMD level, in one run.

Usage: python benchmarks/bench_gemm.py [--types Q4_0,Q8_0,Q4_K,Q6_K] [--shape 5632x2048] [--tokens 16,64,512]
       [--levels avx512vnni,avxvnni,avx2] [--threads 1] [--reps 3] [--prompt-tiles 4x4,3x4]
GOP/s = 2 * n_out * n_in * tokens / best time of one call (activations already quantized and prepared, as the
model shares them between q/k/v and gate/up). "decode8" is what prompts took before the GEMMs
(Linear.prompt_by_decode: the decode kernel on 8-token slices). On one thread the times are process CPU time
(time.process_time), so other jobs on a shared CPU do not count against us; on more threads, wall time.
Levels the CPU lacks are left out.

--small: the decode batches (1..8 tokens) instead: ms per call of the decode kernel (mv) and of the GEMM with
each tile of --tiles (RTxTT), best of --reps (CPU time on one thread, else wall time), on --mats matrices used in turn (the
default cycles over enough of them for 96 MiB of weights, beyond the 32 MiB L3: the weights come from DRAM,
as in a real model's decode step; --mats 1: one matrix, from cache).
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


def run(typ, n_out, n_in, n, lv, reps, clock, rng, tile=None):
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

    tl = gemm_simd.prompt_tile(typ, lv) if tile is None else gemm_simd.tile(*(int(v) for v in tile.split("x")))

    def gemm():
        gemm_simd.GEMM[typ](tok, tl, *packed, *act, y)

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


def run_small(typ, n_out, n_in, lv, tiles, ns, mats, reps, rng, clock):
    kq = typ >= 10
    mod = kquants_simd if kq else legacy_simd
    raw = random_weights(typ, n_out, n_in, rng)
    one = mod.repack_rows(typ, raw, n_out, n_in, lv)
    nbytes = sum(a.nbytes for a in one)
    if mats <= 0:
        mats = max(1, -(-(96 << 20) // nbytes))
    packs = [one] + [tuple(a.copy() for a in one) for _ in range(mats - 1)]  # distinct copies: distinct memory
    tok = simd.token(lv)
    rows = []
    for n in ns:
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        act = mod.prep(typ, lv, *(q8.quantize_q8_k(x)[:3] if kq else q8.quantize_q8_0(x)[:2]))
        y = np.empty((n, n_out), np.float32)
        fns = [("mv", lambda p: mod.MV[typ](tok, *p, *act, y))]
        for t in tiles:
            rt, tt = (int(v) for v in t.rstrip("s").split("x"))
            tl = gemm_simd.tile(rt, tt, t.endswith("s"))
            fns.append((t, lambda p, tl=tl: gemm_simd.GEMM[typ](tok, tl, *p, *act, y)))
        for _, fn in fns:
            fn(packs[0])
        ts = {name: [] for name, _ in fns}
        for r in range(reps):  # the candidates in turn, so that other jobs' load hits them alike
            for name, fn in fns:
                t0 = clock()
                for p in packs:
                    fn(p)
                ts[name].append((clock() - t0) / len(packs))
        res = {name: float(np.min(v)) * 1e3 for name, v in ts.items()}
        rows.append((n, res))
    return mats, nbytes, rows


def main_small(a) -> int:
    n_out, n_in = (int(v) for v in a.shape.split("x"))
    levels = [lv for lv in a.levels.split(",") if lv in isa.available()]
    tiles = [t for t in a.tiles.split(",") if t]
    ns = [int(v) for v in a.tokens.split(",")]
    rng = np.random.default_rng(0)
    for name in a.types.split(","):
        for lv in levels:
            mats, nbytes, rows = run_small(NAMES[name], n_out, n_in, lv, tiles, ns, a.mats, a.reps, rng,
                                              time.process_time if a.threads == 1 else time.perf_counter)
            print(f"{name} {lv} {n_out}x{n_in} ({nbytes / 2**20:.1f} MiB) x {mats} matrices, {a.threads} threads;"
                  " ms per call (best tile in [])")
            names = ["mv"] + tiles
            print("| n | " + " | ".join(names) + " |")
            print("|---:|" + "---:|" * len(names))
            for n, res in rows:
                best = min(res, key=res.get)
                print(f"| {n} | " + " | ".join((f"[{res[k]:.3f}]" if k == best else f"{res[k]:.3f}") for k in names)
                      + " |", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q4_0,Q8_0,Q4_K,Q6_K")
    ap.add_argument("--shape", default="5632x2048")
    ap.add_argument("--tokens", default="16,64,512")
    ap.add_argument("--levels", default="avx512vnni,avxvnni,avx2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--small", action="store_true", help="decode batches: mv vs GEMM tiles, ms per call")
    ap.add_argument("--tiles", default="4x2,2x4,4x3", help="--small: GEMM tiles RTxTT[s] to time (s: rows spread)")
    ap.add_argument("--mats", type=int, default=0, help="--small: matrices cycled (0: enough for 96 MiB)")
    ap.add_argument("--prompt-tiles", default="", help="prompt GEMMs: RTxTT tiles to time instead of the table's")
    a = ap.parse_args(argv)
    nb.set_num_threads(a.threads)
    if a.small:
        return main_small(a)
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
                for t in a.prompt_tiles.split(",") if a.prompt_tiles else [None]:
                    r = run(NAMES[name], n_out, n_in, n, lv, a.reps, clock, rng, t)
                    print(f"| {name}{'' if t is None else ' ' + t} | {lv} | {n} | {r['decode8']:.0f} | "
                          f"{r['gemm']:.0f} | {r['gemm'] / r['decode8']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
