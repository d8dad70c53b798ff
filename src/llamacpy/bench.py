"""`llamacpy bench`: prompt-processing and generation speed, printed as llama-bench prints it.

Usage: llamacpy bench -m MODEL [-m MODEL2 ...] [-p 512] [-n 128] [-t N[,N...]] [-r 5] [--output md|json]
       [--no-warmup]
Tests as llama-bench runs them: `ppN` evaluates N random tokens in one batch from an empty cache; `tgN` decodes
N tokens one at a time from an empty cache; each is run once unmeasured (warm-up) and then -r times; t/s is
mean ± sample std over the repetitions. Lists are comma-separated (-p 128,512 -t 1,2). Beyond llama-bench, the
tg rows carry the achieved weight bandwidth: bytes of weight matrices read per token x tokens/s.

Owns: timing and the report. Must not: compute anything itself (the model does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from .errors import LlamacpyError
from .model_source import add_model_args, resolve_model

FILE_TYPES = {0: "all F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K - Medium",
              11: "Q3_K - Small", 12: "Q3_K - Medium", 13: "Q3_K - Large", 14: "Q4_K - Small",
              15: "Q4_K - Medium", 16: "Q5_K - Small", 17: "Q5_K - Medium", 18: "Q6_K", 32: "BF16"}


def _ints(s: str) -> list[int]:
    try:
        return [int(v) for v in s.split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _size(n: float) -> str:
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return f"{n:.0f} B"


def _params(n: int) -> str:
    for unit, f in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return str(n)


def _model_desc(m) -> str:
    """llama-bench's model column: 'llama 1B Q4_0' (architecture, size class, file type)."""
    n = m.n_params
    cls = f"{round(n / 1e9)}B" if n >= 1e9 else f"{round(n / 1e6)}M" if n >= 1e6 else f"{round(n / 1e3)}K"
    ft = m.gguf.metadata.get("general.file_type")
    if ft is not None:
        ftype = FILE_TYPES.get(int(ft), f"type {ft}")
    else:  # no file type recorded: name the type most 2-D tensors have
        counts = {}
        for t in m.gguf.tensors.values():
            if len(t.shape) == 2:
                counts[t.type_name] = counts.get(t.type_name, 0) + t.nbytes
        ftype = max(counts, key=counts.get) if counts else "?"
        ftype = "all F32" if ftype == "F32" else ftype
    return f"{m.cfg.arch} {cls} {ftype}"


def _run_pp(m, n: int, rng) -> float:
    m.kv.clear()
    toks = rng.integers(0, m.n_vocab, n).astype(np.int32)
    t0 = time.perf_counter()
    m.forward(toks, np.arange(n, dtype=np.int32))
    return time.perf_counter() - t0


def _run_tg(m, n: int, rng) -> float:
    m.kv.clear()
    toks = rng.integers(0, m.n_vocab, n).astype(np.int32)
    t0 = time.perf_counter()
    for i in range(n):
        m.forward(toks[i:i + 1], np.array([i], np.int32))
    return time.perf_counter() - t0


def run_tests(path: str, n_prompt: list[int], n_gen: list[int], threads: list[int], reps: int,
              warmup: bool = True, log=None) -> list[dict]:
    from .kernels import get_num_threads, set_num_threads
    from .model import LlamaModel

    n_ctx = max([p for p in n_prompt] + [g for g in n_gen] + [1])
    t0 = time.perf_counter()
    m = LlamaModel.load(path, n_ctx=n_ctx, n_threads=threads[0])
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    results = []
    tests = [("pp", p) for p in n_prompt if p > 0] + [("tg", g) for g in n_gen if g > 0]
    for requested in threads:
        set_num_threads(requested)
        th = get_num_threads()  # what actually runs: capped at numba's thread pool (NUMBA_NUM_THREADS)
        for kind, n in tests:
            fn = _run_pp if kind == "pp" else _run_tg
            if warmup:
                fn(m, n if kind == "pp" else 1, rng)
            times = [fn(m, n, rng) for _ in range(reps)]
            ts = [n / t for t in times]
            rec = {
                "model_filename": os.path.abspath(path), "model_type": _model_desc(m),
                "model_size": int(sum(t.nbytes for t in m.gguf.tensors.values())), "model_n_params": int(m.n_params), "backend": "CPU (numba)",
                "n_threads": th, "test": f"{kind}{n}", "n_prompt": n if kind == "pp" else 0,
                "n_gen": n if kind == "tg" else 0, "repetitions": reps, "load_s": load_s,
                "samples_ns": [int(t * 1e9) for t in times], "avg_ts": statistics.fmean(ts),
                "stddev_ts": statistics.stdev(ts) if len(ts) > 1 else 0.0,
            }
            if kind == "tg":
                rec["weight_bytes_per_token"] = int(m.weight_bytes_per_token)
                rec["avg_gbs"] = m.weight_bytes_per_token * rec["avg_ts"] / 1e9
            results.append(rec)
            if log:
                log(rec)
    return results


HEADER = ("| model                          |       size |     params | backend    | threads |          test |"
          "                  t/s |   GB/s |\n| ------------------------------ | ---------: | ---------: | ---------- |"
          " ------: | ------------: | -------------------: | -----: |")


def md_row(r: dict) -> str:
    ts = f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}"
    gbs = f"{r['avg_gbs']:.2f}" if "avg_gbs" in r else ""
    return (f"| {r['model_type']:<30} | {_size(r['model_size']):>10} | {_params(r['model_n_params']):>10} | "
            f"{'CPU':<10} | {r['n_threads']:>7} | {r['test']:>13} | {ts:>20} | {gbs:>6} |")


def main(argv: list[str] | None = None) -> int:
    from .cpu import physical_cores

    ap = argparse.ArgumentParser(prog="llamacpy bench", description="measure pp and tg speed (like llama-bench)")
    add_model_args(ap, multiple=True)
    ap.add_argument("-p", "--n-prompt", type=_ints, default=[512])
    ap.add_argument("-n", "--n-gen", type=_ints, default=[128])
    ap.add_argument("-t", "--threads", type=_ints, default=None)
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    ap.add_argument("-o", "--output", choices=["md", "json"], default="md")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--no-repack-cache", action="store_true", help="repack weights in memory, not via the disk cache")
    a = ap.parse_args(argv)
    a.model = resolve_model(a)
    from .kernels import isa, repack_cache

    level = isa.level()  # an LLAMACPY_ISA this CPU lacks fails here, before any loading
    if a.no_repack_cache:
        repack_cache.set_enabled(False)
    threads = a.threads or [physical_cores()]
    if a.repetitions < 1 or any(t < 1 for t in threads):
        raise LlamacpyError("bench: -r and -t must be >= 1")
    results = []
    if a.output == "md":
        print(HEADER, flush=True)
    for path in a.model:
        if not os.path.isfile(path):
            raise LlamacpyError(f"{path}: no such file")
        log = (lambda r: print(md_row(r), flush=True)) if a.output == "md" else None
        results += run_tests(path, a.n_prompt, a.n_gen, threads, a.repetitions, not a.no_warmup, log)
    for r in results:
        r["isa"] = level
    if a.output == "md":
        print(f"\nisa: {isa.describe()}\nrepack cache: {repack_cache.describe()}", flush=True)
    if a.output == "json":
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
