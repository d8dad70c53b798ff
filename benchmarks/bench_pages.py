"""Read bandwidth of a numba sum over the same bytes in three kinds of memory (issue 10, the 7B gap):
    file  -- the repack-cache entries of a model, memory-mapped as repack_cache mapped them before (private
             file mapping of page-cache pages; the file's cached pages dropped first, then read back through
             the mapping: readahead's folios, mapped with 4 KiB entries);
    filehuge -- the same with madvise(MADV_HUGEPAGE) on the mapping before it is touched: where the filesystem
             has large folios (ext4 on Linux >= 6.16) readahead reads 2 MiB folios into the page cache and
             they are mapped by PMD (FilePmdMapped) -- still the shared page cache;
    anon  -- an anonymous copy (numpy array: malloc'd, 4 KiB pages unless THP is "always");
    huge  -- an anonymous mmap with madvise(MADV_HUGEPAGE) before it is touched (2 MiB pages where the kernel
             has them: THP "madvise" or "always").
One kind at a time (the others freed; the file's pages stay cached), interleaved rounds, best pass per kind, 1 and 2 threads.

    python benchmarks/bench_pages.py --dir ~/.cache/llamacpy/repack/<hash>-7b-Q4_0.gguf [--gb 3.8] [--rounds 2]

Prints GB/s per kind and thread count, and AnonHugePages of the process after the huge copy is made.
Must not: be imported by the library.
"""

from __future__ import annotations

import argparse
import gc
import mmap
import os
import sys
import time
from pathlib import Path

import numba as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import read_sum  # noqa: E402


@nb.njit(parallel=True, cache=True)
def _copy(src, dst, off):
    for i in nb.prange(src.shape[0]):
        dst[off + i] = src[i]


def file_arrays(folder: Path, limit: int, huge: bool = False):
    """uint64 views of the .rpk entries (largest first) up to `limit` bytes, each its own private mapping; their
    cached pages dropped first (posix_fadvise DONTNEED: clean pages, read back from disk at the first touch)."""
    files = sorted(folder.glob("*.rpk"), key=lambda p: -p.stat().st_size)
    out, maps, total = [], [], 0
    for p in files:
        if total >= limit:
            break
        with open(p, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            if huge:
                mm.madvise(mmap.MADV_HUGEPAGE)
        n = len(mm) // 8
        out.append(np.frombuffer(mm, np.uint64, count=n))
        maps.append(mm)
        total += n * 8
    return out, maps, total


def smaps_kb(field: str) -> int:
    try:
        with open("/proc/self/smaps_rollup") as f:
            for ln in f:
                if ln.startswith(field + ":"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return -1


def timed(arrs, nbytes, threads, passes=3):
    nb.set_num_threads(threads)
    for a in arrs[:1]:
        read_sum(a[:1024])
    best = 1e9
    for _ in range(passes):
        t0 = time.perf_counter()
        for a in arrs:
            read_sum(a)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def make_copy(src_arrs, total, huge: bool):
    n = total // 8
    if huge:
        mm = mmap.mmap(-1, n * 8, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        mm.madvise(mmap.MADV_HUGEPAGE)
        dst = np.frombuffer(mm, np.uint64, count=n)
    else:
        mm, dst = None, np.empty(n, np.uint64)
    off = 0
    for a in src_arrs:
        _copy(a, dst, off)
        off += a.shape[0]
    return dst, mm


KINDS = ("file", "filehuge", "anon", "huge")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="a model's repack-cache folder")
    ap.add_argument("--gb", type=float, default=3.8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", default="1,2")
    a = ap.parse_args(argv)
    ths = [int(t) for t in a.threads.split(",")]
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        thp = f.read().strip()
    print(f"THP: {thp}; load {os.getloadavg()[0]:.2f}")
    res = {}
    for r in range(a.rounds):
        for kind in KINDS:
            arrs, maps, total = file_arrays(Path(a.dir).expanduser(), int(a.gb * 1e9), kind == "filehuge")
            if kind.startswith("file"):
                for x in arrs:
                    read_sum(x)  # read in (disk -> page cache)
                del x
                print(f"{kind}: FilePmdMapped {smaps_kb('FilePmdMapped') / 1e6:.2f} GB of {total / 1e9:.2f} GB")
            keep = None
            if kind != "file":
                dst, keep = make_copy(arrs, total, kind == "huge")
                del arrs
                for m in maps:
                    m.close()
                maps = []
                arrs = [dst]
                if kind == "huge" and r == 0:
                    print(f"huge copy: AnonHugePages {smaps_kb('AnonHugePages') / 1e6:.2f} GB of {total / 1e9:.2f} GB")
            for t in ths:
                gbs = timed(arrs, total, t)
                res.setdefault((kind, t), []).append(gbs)
                print(f"round {r} {kind:5s} {t} thread(s): {gbs:6.2f} GB/s ({total / 1e9:.2f} GB, load "
                      f"{os.getloadavg()[0]:.2f})", flush=True)
            del arrs
            gc.collect()
            for m in maps:
                m.close()
            if keep is not None:
                del dst
                gc.collect()
                keep.close()
    print("| memory | " + " | ".join(f"{t} thread(s) GB/s (best)" for t in ths) + " |")
    print("|---|" + "---:|" * len(ths))
    for kind in KINDS:
        print(f"| {kind} | " + " | ".join(f"{max(res[(kind, t)]):.2f}" for t in ths) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
