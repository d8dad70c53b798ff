"""`llamacpy perplexity`: perplexity over a text file, computed as llama-perplexity computes it.

Owns: the chunking (non-overlapping windows of n_ctx tokens, the first token of each chunk replaced by BOS when
the vocabulary adds one), scoring only the second half of each window, the running `[i]ppl` printout and the
final `PPL = X +/- Y` (Y from the variance of the per-token negative log-likelihoods).
Must not: print anything else on stdout; progress goes to stderr (a bar only when stderr is a terminal).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import LlamacpyError
from .generation import Session
from .gguf_file import GGUFFile
from .model import LlamaModel
from .model_source import add_model_args, resolve_model
from .tokenizer import load_tokenizer


class PerplexityError(LlamacpyError):
    pass


@dataclass
class PerplexityResult:
    ppl: float
    pm: float  # the +/- llama-perplexity prints
    running: list[float] = field(default_factory=list)  # ppl after each chunk
    n_tokens_scored: int = 0


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64.  logits: (n, n_vocab); targets: (n,)"""
    x = logits.astype(np.float64)
    mx = x.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(x - mx).sum(axis=1))
    return lse - x[np.arange(len(targets)), targets]


def perplexity(model: LlamaModel, tokens: list[int], n_ctx: int, n_batch: int, bos_id: int | None,
               n_chunks: int = -1, on_chunk=None) -> PerplexityResult:
    """llama-perplexity's algorithm over `tokens` (already tokenized with BOS as the vocab wants)."""
    if n_ctx > model.n_ctx:
        raise PerplexityError(f"-c {n_ctx} is larger than the model's context window {model.n_ctx}")
    n_chunk_max = len(tokens) // n_ctx
    if n_chunk_max < 1:
        raise PerplexityError(f"you need at least {n_ctx} tokens for a context of {n_ctx}; the text has {len(tokens)}")
    n_chunk = n_chunk_max if n_chunks < 0 else min(n_chunks, n_chunk_max)
    first = n_ctx // 2
    session = Session(model, n_batch=min(n_batch, n_ctx))
    nll_sum = nll2_sum = 0.0
    count = 0
    running = []
    for i in range(n_chunk):
        chunk = list(tokens[i * n_ctx : (i + 1) * n_ctx])
        if bos_id is not None:
            chunk[0] = bos_id
        session.reset()
        logits = session.eval(chunk, all_logits=True)  # (n_ctx, n_vocab)
        targets = np.asarray(tokens[i * n_ctx + first + 1 : (i + 1) * n_ctx])
        nll = token_nll(logits[first : n_ctx - 1], targets)
        nll_sum += float(nll.sum())
        nll2_sum += float((nll * nll).sum())
        count += len(nll)
        running.append(math.exp(nll_sum / count))
        if on_chunk:
            on_chunk(i, running[-1])
    mean = nll_sum / count
    var = nll2_sum / count - mean * mean
    ppl = math.exp(mean)
    pm = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else 0.0
    return PerplexityResult(ppl=ppl, pm=pm, running=running, n_tokens_scored=count)


def _chunk_bar(total: int):
    """A progress bar on stderr when it is a terminal and stdout is not (on a terminal, stdout's running values
    already show the progress); None otherwise."""
    if not _isatty(sys.stderr) or _isatty(sys.stdout):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="chunk", desc="perplexity", file=sys.stderr, dynamic_ncols=True, leave=False)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="llamacpy perplexity", description="Perplexity of a model over a text file.")
    add_model_args(p)
    p.add_argument("-f", "--file", required=True, help="text file")
    p.add_argument("-c", "--ctx-size", "--ctx_size", dest="ctx_size", type=int, default=512)
    p.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", type=int, default=2048)
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--chunks", type=int, default=-1, help="max chunks to process (-1 = all)")
    args = p.parse_args(argv)
    args.model = resolve_model(args)
    if args.ctx_size <= 1:
        raise PerplexityError(f"-c must be at least 2, got {args.ctx_size}")
    if args.chunks == 0 or args.chunks < -1:
        raise PerplexityError(f"--chunks must be -1 (all) or at least 1, got {args.chunks}")
    try:
        with open(args.file, "rb") as f:
            text = f.read()
    except OSError as e:
        raise PerplexityError(f"cannot read {args.file!r}: {e.strerror}") from None
    t0 = time.perf_counter()
    gguf = GGUFFile(args.model)
    tokenizer = load_tokenizer(gguf.metadata, args.model)
    model = LlamaModel(gguf, n_ctx=args.ctx_size, n_threads=args.threads)
    print(f"load time = {1e3 * (time.perf_counter() - t0):.2f} ms", file=sys.stderr)
    tokens = tokenizer.tokenize(text, add_bos=True, special=False)
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    n_chunk = len(tokens) // args.ctx_size
    print(f"perplexity: tokenized {len(tokens)} tokens; calculating perplexity over {n_chunk} chunks, n_ctx="
          f"{args.ctx_size}, batch_size={min(args.batch_size, args.ctx_size)}", file=sys.stderr)
    t1 = time.perf_counter()

    bar = _chunk_bar(n_chunk if args.chunks < 0 else min(n_chunk, args.chunks))

    def show(i, ppl):
        sys.stdout.write(f"[{i + 1}]{ppl:.4f},")
        sys.stdout.flush()
        if bar is not None:
            bar.update(1)

    try:
        res = perplexity(model, tokens, args.ctx_size, args.batch_size, bos, args.chunks, on_chunk=show)
    finally:
        if bar is not None:
            bar.close()
    print()
    print(f"Final estimate: PPL = {res.ppl:.4f} +/- {res.pm:.5f}")
    dt = time.perf_counter() - t1
    print(f"perplexity: {dt:.2f} s for {len(res.running)} chunks ({dt / len(res.running):.3f} s per chunk)",
          file=sys.stderr)
    return 0
