"""Cold vs warm start of `llamacpy run -p "Once upon a time" -n 64` (the README's command, demo model).

A cold run gets an empty NUMBA_CACHE_DIR (every kernel compiles); the warm run right after reuses it. Wall
time and the child's CPU time (user+sys) are printed: on a shared machine wall time moves with the load,
CPU time much less. `--src DIR` runs another source tree (e.g. an older commit exported with `git archive`)
and `--model` passes -m (trees from before the demo model need it); `--rounds N` repeats.

    python benchmarks/cold_start.py --rounds 3
    python benchmarks/cold_start.py --src /tmp/base/src --model ../shared/models/stories260K.gguf
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(src: str, model: str | None, cache: str) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "llamacpy", "run", "-p", "Once upon a time", "-n", "64"]
    if model:
        cmd += ["-m", model]
    env = dict(os.environ, PYTHONPATH=src, NUMBA_CACHE_DIR=cache)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "src"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    for _ in range(a.rounds):
        with tempfile.TemporaryDirectory() as cache:
            cw, cc = one(a.src, a.model, cache)
            ww, wc = one(a.src, a.model, cache)
        print(f"cold {cw:6.2f} s wall {cc:5.2f} s cpu | warm {ww:6.2f} s wall {wc:5.2f} s cpu", flush=True)


if __name__ == "__main__":
    main()
