"""One-token Q4_0 / Q8_0 matvecs at given shapes from DRAM: the decode kernel (MVX) against the spread GEMM tiles
(gemm_simd, TT=1) and a plain read of the same bytes, at 1 and 2 threads (issue 10's 7B profile).

Usage: python benchmarks/bench_7b_kernels.py [--shapes 4096x4096,11008x4096,4096x11008] [--type Q4_0]
       [--tiles 3,2,4] [--threads 1,2] [--reps 5] [--rounds 2] [--mb 320] [--no-huge] [--cpu]
The repacked matrices (the decode layout) are copied into one anonymous buffer advised MADV_HUGEPAGE (as the
repack cache's PMD-mapped entries are; --no-huge: 4 KiB pages) and cycled over --mb MB in all, so every call
reads from DRAM. ms = best wall time of one call (perf_counter), GB/s = packed bytes / that time. Interleaved
rounds (over shapes and variants) so that a burst of load from other jobs hits every variant. Each tile is
checked bit for bit against the decode kernel first. Tiles: RT, a spread RT x 1 tile (gemm_simd.tile(RT, 1, True)).
Caveat (benchmarks/RESULTS.md, j13): the copies and the activation arrays sit at fixed addresses here; on
4096x11008 the 3x1 tile read 20-24 GB/s here against 31 GB/s for the same kernel inside the model.
Must not: be imported by the library.
"""

from __future__ import annotations

import argparse
import mmap
import re
import sys
import time
from pathlib import Path

import numba as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import random_weights, read_sum  # noqa: E402

from llamacpy.kernels import gemm_simd, isa, legacy_simd, simd  # noqa: E402
from llamacpy.kernels.common import Q4_0, Q8_0  # noqa: E402


class _Arena:
    """Arrays carved out of one anonymous mapping (MADV_HUGEPAGE unless told not)."""

    def __init__(self, nbytes: int, huge: bool):
        self.mm = mmap.mmap(-1, nbytes + (4 << 20))
        if huge and hasattr(mmap, "MADV_HUGEPAGE"):
            self.mm.madvise(mmap.MADV_HUGEPAGE)
        self.buf = np.frombuffer(self.mm, np.uint8)
        self.off = 0

    def copy(self, a: np.ndarray) -> np.ndarray:
        self.off = -(-self.off // 4096) * 4096
        out = self.buf[self.off:self.off + a.nbytes].view(a.dtype).reshape(a.shape)
        out[...] = a
        self.off += a.nbytes
        return out


def _spec(v: str) -> int:
    if not re.fullmatch(r"\d+", v):
        raise SystemExit(f"--tiles: bad tile {v!r} (a row count)")
    return int(v)


def _cycler(copies):
    state = [0]

    def nxt():
        state[0] = (state[0] + 1) % len(copies)
        return copies[state[0]]

    return nxt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008")
    ap.add_argument("--type", default="Q4_0", choices=("Q4_0", "Q8_0"))
    ap.add_argument("--tiles", default="3", help="spread n=1 tiles, comma list of row counts RT")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mb", type=int, default=320)
    ap.add_argument("--no-huge", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="1 thread: process CPU time instead of wall time")
    a = ap.parse_args(argv)
    typ = Q4_0 if a.type == "Q4_0" else Q8_0
    lv = isa.level()
    tok = simd.token(lv)
    rng = np.random.default_rng(0)
    tiles = [_spec(v) for v in a.tiles.split(",") if v]
    n32, off = legacy_simd.mvx_args(typ, lv)
    print(f"level {lv}, type {a.type}, {'4 KiB pages' if a.no_huge else 'MADV_HUGEPAGE'}, "
          f"load {open('/proc/loadavg').read().split()[0]}")
    cases = []  # (name, nbytes, ncopy, calls, flat)
    for shp in a.shapes.split(","):
        n_out, n_in = (int(v) for v in shp.split("x"))
        raw = random_weights(typ, n_out, n_in, rng)
        packed = legacy_simd.repack_rows(typ, raw, n_out, n_in, lv)
        nbytes = sum(p.nbytes for p in packed)
        ncopy = max(2, int(np.ceil(a.mb * 1e6 / nbytes)))
        arena = _Arena(ncopy * (nbytes + 8192), not a.no_huge)
        copies = [tuple(arena.copy(p) for p in packed) for _ in range(ncopy)]
        flat = arena.buf[:arena.off].view(np.uint64)
        x = rng.standard_normal((1, n_in)).astype(np.float32)
        y = np.zeros((1, n_out), np.float32)
        act = legacy_simd.activations(typ, lv, x)
        gem = gemm_simd.GEMM[typ]
        ref = np.zeros_like(y)
        legacy_simd.MVX[typ](tok, *copies[0], x, n32, off, ref)
        nxt = _cycler(copies)
        calls = {"mvx": (lambda nxt=nxt, x=x, y=y: legacy_simd.MVX[typ](tok, *nxt(), x, n32, off, y))}
        for rt in tiles:
            tl = gemm_simd.tile(rt, 1, True)
            calls[f"t{rt}"] = (
                lambda tl=tl, nxt=nxt, act=act, y=y: gem(tok, tl, *nxt(), *act, y))
            y2 = np.zeros_like(y)
            gem(tok, tl, *copies[0], *act, y2)
            assert np.array_equal(y2, ref), (shp, rt)  # bit for bit the decode kernel's
        cases.append((f"{n_out}x{n_in} ({nbytes / 1e6:.1f} MB, {ncopy} copies)", nbytes, ncopy, calls, flat, arena))
    read_sum(cases[0][4][:1024])
    for th in (int(v) for v in a.threads.split(",")):
        nb.set_num_threads(th)
        clock = time.process_time if (a.cpu and th == 1) else time.perf_counter
        best = [{k: 1e9 for k in [*c[3], "read"]} for c in cases]
        for _ in range(a.rounds):  # interleaved over shapes and variants
            for (name, nbytes, ncopy, calls, flat, _), bst in zip(cases, best):
                for k, fn in calls.items():
                    fn()
                    for _ in range(a.reps * 4):
                        t0 = clock()
                        fn()
                        bst[k] = min(bst[k], clock() - t0)
                t0 = clock()
                read_sum(flat)
                bst["read"] = min(bst["read"], (clock() - t0) / ncopy)
        for (name, nbytes, *_), bst in zip(cases, best):
            cells = "  ".join(f"{k} {bst[k] * 1e3:.3f} ms {nbytes / bst[k] / 1e9:.1f} GB/s" for k in bst)
            print(f"{name} {th}t: {cells}", flush=True)
    print(f"load {open('/proc/loadavg').read().split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
