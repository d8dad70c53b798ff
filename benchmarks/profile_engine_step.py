"""Where a server step's time goes, without HTTP: the Engine alone with k concurrent greedy requests.

Usage: PYTHONPATH=src python benchmarks/profile_engine_step.py MODEL.gguf [--threads 2] [--np 8] [--clients 1,4]
    [-n 128] [--ctx 16384]

For each client count k: k requests (distinct short prompts, temperature 0, ignore_eos, n_predict -n) submitted
together to one Engine (as `llamacpy serve -np NP -c CTX` builds it); per steady decode step (every slot
generating) the step's wall time split into forward_batch, per-slot sampling (_sample: the sampler chain,
detokenize, stop strings, the event) and the rest of _step (batch assembly, bookkeeping); median ms per step and
aggregate tokens/s. Compare with benchmarks/stepn.py (the model's step alone) and bench_server.py (with HTTP).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llamacpy.engine import CompletionRequest, Engine
from llamacpy.gguf_file import GGUFFile
from llamacpy.model import LlamaModel
from llamacpy.sampling import SamplingParams
from llamacpy.tokenizer import load_tokenizer

PROMPTS = ["Once upon a time", "The little dog ran to", "Tom and Sue went to the park. They", "One day, a bird",
           "Lily had a big red ball and", "The sun was hot, so", "Max wanted a cake. He", "The old tree said"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--np", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=16384)
    ap.add_argument("--clients", default="1,4")
    ap.add_argument("-n", type=int, default=128)
    a = ap.parse_args(argv)
    g = GGUFFile(a.model)
    tok = load_tokenizer(g.metadata, a.model)
    model = LlamaModel(g, n_ctx=a.ctx // a.np, n_threads=a.threads, n_seq=1)
    eng = Engine(model, tok, n_slots=a.np, n_ctx_slot=a.ctx // a.np)
    rec = []  # per step: (n_gen rows, n rows, step s, forward s, sample s)
    cur = {}
    orig_fwd, orig_sample, orig_step = model.forward_batch, eng._sample, eng._step

    def fwd(toks, *args, **kw):
        t0 = time.perf_counter()
        try:
            return orig_fwd(toks, *args, **kw)
        finally:
            cur["fwd"] = cur.get("fwd", 0.0) + time.perf_counter() - t0
            cur["rows"] = len(toks)

    def sample(sl, logits):
        t0 = time.perf_counter()
        try:
            return orig_sample(sl, logits)
        finally:
            cur["sample"] = cur.get("sample", 0.0) + time.perf_counter() - t0
            cur["gen"] = cur.get("gen", 0) + 1

    def step():
        cur.clear()
        t0 = time.perf_counter()
        orig_step()
        if "fwd" in cur:
            rec.append((cur.get("gen", 0), cur["rows"], time.perf_counter() - t0, cur["fwd"], cur.get("sample", 0.0)))

    model.forward_batch, eng._sample, eng._step = fwd, sample, step

    def round_(k, n):
        reqs = [CompletionRequest(prompt_tokens=tok.tokenize(PROMPTS[i % len(PROMPTS)].encode(), add_bos=True),
                                  n_predict=n, params=SamplingParams(temp=0.0), ignore_eos=True, cache_prompt=False)
                for i in range(k)]
        t0 = time.perf_counter()
        hs = [eng.submit(r) for r in reqs]
        ntok = sum(sum(1 for ev in h if ev.token is not None) for h in hs)
        return ntok / (time.perf_counter() - t0)

    round_(max(int(c) for c in a.clients.split(",")), 8)  # warm-up: compiles, first-use repacks
    print(f"{a.model}, {a.threads} threads, -np {a.np}: ms per steady decode step (median), n_predict {a.n}")
    print("| clients | t/s | step | forward_batch | sampling+events | rest of _step |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k in (int(c) for c in a.clients.split(",")):
        rec.clear()
        tps = round_(k, a.n)
        st = np.array([r[2:] for r in rec if r[0] == k and r[1] == k]) * 1e3  # steps where all k slots generate
        step_ms, fwd_ms, smp_ms = np.median(st, axis=0)
        rest = np.median(st[:, 0] - st[:, 1] - st[:, 2])
        print(f"| {k} | {tps:.1f} | {step_ms:.1f} | {fwd_ms:.1f} | {smp_ms:.2f} | {rest:.2f} |", flush=True)
    eng.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
