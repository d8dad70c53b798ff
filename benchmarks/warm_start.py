"""Warm start of `llamacpy run -m MODEL -p hi -n 1` (numba cache and repack cache present): median of N.

Each round runs every source tree once, in turn (same-run comparison: a load spike hits both), after one
untimed warm-up run per tree (a tree exported elsewhere has its own numba cache next to its sources, and
the first run may write the repack cache). Prints, per tree, the median wall time and the median CPU time
(user+sys of the child: on a shared machine it moves much less with the load than wall time), with
`uptime` before and after. `--first-start` gives every run an empty repack cache folder (LLAMACPY_REPACK_CACHE,
deleted afterwards): the first start of a model, repacked weights written, numba cache still warm.

    python benchmarks/warm_start.py -m /tmp/rg/tl-Q4_0.gguf --rounds 5
    git archive HEAD~3 src | tar -x -C /tmp/base && \
        python benchmarks/warm_start.py -m /tmp/rg/tl-Q4_0.gguf --src /tmp/base/src --src src
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one(src: str, model: str, extra: list[str], first: bool = False) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "llamacpy", "run", "-m", model, "-p", "hi", "-n", "1", *extra]
    env = dict(os.environ, PYTHONPATH=src)
    if first:
        env["LLAMACPY_REPACK_CACHE"] = tempfile.mkdtemp(prefix="repack-first-")
    try:
        return _timed(cmd, env)
    finally:
        if first:
            shutil.rmtree(env["LLAMACPY_REPACK_CACHE"], ignore_errors=True)


def _timed(cmd: list[str], env: dict) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def uptime() -> str:
    try:
        return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load ?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--src", action="append", default=None, help="source tree(s) to compare (default: ./src)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--first-start", action="store_true", help="an empty repack cache for every run")
    ap.add_argument("extra", nargs="*", help="more `run` flags (after --)")
    a = ap.parse_args()
    srcs = [str(Path(s).resolve()) for s in (a.src or [str(ROOT / "src")])]
    print(uptime(), flush=True)
    for s in srcs:
        one(s, a.model, a.extra)
    res: dict[str, list[tuple[float, float]]] = {s: [] for s in srcs}
    for _ in range(a.rounds):
        for s in srcs:
            res[s].append(one(s, a.model, a.extra, a.first_start))
    for s in srcs:
        walls = [w for w, _ in res[s]]
        cpus = [c for _, c in res[s]]
        print(f"{s}: wall median {statistics.median(walls):.2f} s (min {min(walls):.2f}) | "
              f"cpu median {statistics.median(cpus):.2f} s (min {min(cpus):.2f})", flush=True)
    print(uptime(), flush=True)


if __name__ == "__main__":
    main()
