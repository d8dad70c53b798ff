"""Run llamacpy and llama.cpp (through llama-cpp-python) on the same GGUF in the same run; print the ratios.

Usage: python benchmarks/compare_llamacpp.py MODEL.gguf [-p 512] [-n 128] [-t 2] [-r 3]
Both engines take the same tests as `llamacpy bench`: ppN = N random tokens in one batch from an empty cache,
tgN = N single-token steps from an empty cache; one warm-up, then -r repetitions, alternating engines so that
load from other processes on this shared machine hits both alike. Each engine lives in its own worker process:
in one process their OpenMP runtimes (llama.cpp's threads and numba's) fight and slow each other down several
times over. If `llama_cpp` is not importable it says so and exits 0.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time


def _worker(engine: str, model: str, n_ctx: int, threads: int, conn) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    if engine == "llamacpy":
        from llamacpy.model import LlamaModel

        m = LlamaModel.load(model, n_ctx=n_ctx, n_threads=threads)
        n_vocab = m.n_vocab

        def run(kind, n):
            m.kv.clear()
            toks = rng.integers(0, n_vocab, n).astype(np.int32)
            t0 = time.perf_counter()
            if kind == "pp":
                m.forward(toks)
            else:
                for i in range(n):
                    m.forward(toks[i:i + 1])
            return time.perf_counter() - t0
    else:
        import llama_cpp

        llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=min(n_ctx, 512),
                              n_threads=threads, n_threads_batch=threads, verbose=False)
        n_vocab = llm.n_vocab()

        def run(kind, n):
            llm.reset()
            toks = rng.integers(0, n_vocab, n).tolist()
            t0 = time.perf_counter()
            if kind == "pp":
                llm.eval(toks)
            else:
                for tok in toks:
                    llm.eval([tok])
            return time.perf_counter() - t0

    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        conn.send(run(*msg))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-r", type=int, default=3)
    a = ap.parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama_cpp (llama-cpp-python) is not installed: nothing to compare against.")
        return 0

    ctx = mp.get_context("spawn")
    n_ctx = max(a.p, a.n) + 8
    workers = {}
    for engine in ("llamacpy", "llama.cpp"):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(engine, a.model, n_ctx, a.t, child), daemon=True)
        p.start()
        if parent.recv() != "ready":
            raise RuntimeError(f"{engine} worker failed to start")
        workers[engine] = (p, parent)

    def call(engine, kind, n):
        conn = workers[engine][1]
        conn.send((kind, n))
        return conn.recv()

    rows = []
    for kind, n in (("pp", a.p), ("tg", a.n)):
        if n <= 0:
            continue
        for engine in workers:  # warm-up: JIT cache load, repack, page faults
            call(engine, kind, n)
        res = {e: [] for e in workers}
        for _ in range(a.r):
            for engine in workers:
                res[engine].append(n / call(engine, kind, n))
        rows.append((f"{kind}{n}", res["llamacpy"], res["llama.cpp"]))
    for p, conn in workers.values():
        conn.send(None)
        p.join(10)
    print(f"model {a.model}, {a.t} threads, {a.r} repetitions (alternating, one process per engine)")
    print("| test | llamacpy t/s | llama.cpp t/s | ratio |")
    print("|---|---:|---:|---:|")
    for test, t_o, t_r in rows:
        mo, mr = statistics.fmean(t_o), statistics.fmean(t_r)
        so = statistics.stdev(t_o) if len(t_o) > 1 else 0.0
        sr = statistics.stdev(t_r) if len(t_r) > 1 else 0.0
        print(f"| {test} | {mo:.2f} ± {so:.2f} | {mr:.2f} ± {sr:.2f} | {mo / mr:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
