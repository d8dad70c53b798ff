"""Per-token cost of grammar-constrained sampling vs unconstrained, on a 32K and a 128K vocabulary.

For each vocabulary (golden/tokenizer/ggml-vocab-llama-spm.gguf: 32000 tokens, ggml-vocab-llama-bpe.gguf: 128256)
and each grammar (none, any JSON object `-j {}`, the count schema, a GBNF list), it draws N tokens from random
logits (seeded) through the default llama.cpp chain -- sample, check against the grammar, re-sample from masked
logits when rejected, accept -- and reports milliseconds per token, and separately the time of one mask
computation. Random logits make the first draw fail the grammar most of the time, so this is the slow path.

    PYTHONPATH=src python benchmarks/bench_grammar.py [--tokens 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from llamacpy.gguf_file import GGUFFile  # noqa: E402
from llamacpy.grammar import Grammar, json_schema_to_gbnf  # noqa: E402
from llamacpy.sampling import Sampler, SamplingParams  # noqa: E402
from llamacpy.tokenizer import load_tokenizer  # noqa: E402
from shared import golden_dir  # noqa: E402

GRAMMARS = {
    "none": None,
    "json {}": json_schema_to_gbnf({}),
    "count schema": json_schema_to_gbnf({"type": "object", "properties": {
        "count": {"type": "integer", "minimum": 0, "maximum": 99}, "ok": {"type": "boolean"}},
        "required": ["count", "ok"], "additionalProperties": False}),
    "gbnf list": 'root ::= item+\nitem ::= "- " [a-z]+ (" " [a-z]+)? "\\n"',
}


def run(vocab, gbnf, n_tokens: int, seed: int = 0) -> tuple[float, float, float, float]:
    """(ms per token, CPU ms per token, ms per mask, s to build the grammar). The CPU time (this process) is the
    steadier number on a shared machine; the sampler is single-threaded, so it is also the work done."""
    t0 = time.perf_counter()
    sampler = Sampler(SamplingParams(seed=seed, grammar=gbnf), vocab.n_vocab, vocab=vocab)
    build = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n_tokens, vocab.n_vocab)).astype(np.float32) * 3  # (n_tokens, n_vocab)
    mask_s, n_mask = 0.0, 0
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n_tokens):
        tok = sampler.sample(logits[i])
        sampler.accept(tok)
        if sampler.grammar is not None and tok in vocab.eog_ids:
            sampler.grammar.reset()
    per_token = (time.perf_counter() - t0) / n_tokens
    cpu_per_token = (time.process_time() - c0) / n_tokens
    if sampler.grammar is not None:  # mask alone: fresh states along a short accepted path
        g = sampler.grammar
        g.reset()
        for i in range(min(n_tokens, 50)):
            g._mask = None
            t1 = time.perf_counter()
            m = g.mask()
            mask_s += time.perf_counter() - t1
            n_mask += 1
            allowed = np.nonzero(m)[0]
            if len(allowed) == 0 or g.is_complete():
                g.reset()
                continue
            tok = int(allowed[rng.integers(len(allowed))])
            if tok in vocab.eog_ids:
                g.reset()
            else:
                g.accept(tok)
    return 1e3 * per_token, 1e3 * cpu_per_token, (1e3 * mask_s / n_mask) if n_mask else float("nan"), build


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=200)
    args = ap.parse_args(argv)
    for name in ("ggml-vocab-llama-spm.gguf", "ggml-vocab-llama-bpe.gguf"):
        path = golden_dir() / "tokenizer" / name
        vocab = load_tokenizer(GGUFFile(str(path)).metadata, str(path))
        print(f"{name}: {vocab.n_vocab} tokens")
        for gname, gbnf in GRAMMARS.items():
            per_tok, cpu_tok, per_mask, build = run(vocab, gbnf, args.tokens)
            print(f"  {gname:13s} {per_tok:8.2f} ms/token ({cpu_tok:6.2f} CPU)   one mask {per_mask:7.3f} ms"
                  f"   grammar build {build:5.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
