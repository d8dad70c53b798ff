"""The llama.cpp sampler chain: penalties -> top_k -> typical_p -> top_p -> min_p -> temperature -> draw.

Owns: turning one row of logits into a token id, with llama.cpp's defaults and edge-case semantics
(src/llama-sampling.cpp and common/sampling.cpp): penalties over the last `repeat_last_n` accepted tokens
(prompt included), `top_k <= 0` and `top_p/typical_p >= 1` and `min_p <= 0` disable those steps, `temp <= 0`
keeps only the most likely token (greedy). A seed makes the draw reproducible; seed < 0 draws a random seed.
Must not: evaluate the model or touch the tokenizer.

Each step is a plain function over a candidate set `(ids, logits)` -- two parallel 1-D arrays.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

DEFAULT_SEED = -1


@dataclass
class SamplingParams:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int = DEFAULT_SEED
    min_keep: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)

    def validate(self) -> None:
        if self.repeat_last_n < -1:
            raise ValueError(f"repeat_last_n must be >= -1, got {self.repeat_last_n}")
        if self.top_p < 0 or self.min_p < 0 or self.typical_p < 0:
            raise ValueError("top_p, min_p and typical_p must be >= 0")


# -- the steps ---------------------------------------------------------------------------------------

def apply_penalties(logits: np.ndarray, history, repeat: float, freq: float, present: float) -> None:
    """In place on the full (n_vocab,) logits: repetition penalty (divide positive / multiply negative logits)
    and frequency/presence penalties, for each distinct token in `history`."""
    if not history or (repeat == 1.0 and freq == 0.0 and present == 0.0):
        return
    ids, counts = np.unique(np.fromiter(history, dtype=np.int64), return_counts=True)
    ids_ok = (ids >= 0) & (ids < logits.shape[0])
    ids, counts = ids[ids_ok], counts[ids_ok]
    vals = logits[ids]
    vals = np.where(vals <= 0, vals * repeat, vals / repeat)
    logits[ids] = vals - counts * freq - present


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def top_k(ids, logits, k: int, min_keep: int):
    """Keep the k most likely, sorted descending (llama.cpp sorts here). k <= 0 disables."""
    n = logits.shape[0]
    if k <= 0:
        k = n
    k = min(max(k, min_keep), n)
    if k < n:
        part = np.argpartition(-logits, k - 1)[:k]
        ids, logits = ids[part], logits[part]
    order = np.argsort(-logits, kind="stable")
    return ids[order], logits[order]


def typical_p(ids, logits, p: float, min_keep: int):
    """Locally typical sampling: keep the tokens whose surprise is closest to the entropy, up to mass p."""
    if p >= 1.0:
        return ids, logits
    probs = softmax(logits)
    logp = np.log(np.maximum(probs, 1e-45))
    entropy = -(probs * logp).sum()
    order = np.argsort(np.abs(-logp - entropy), kind="stable")
    cum = np.cumsum(probs[order])
    last = len(order)
    for i in range(len(order)):
        if cum[i] > p and i >= min_keep - 1:
            last = i + 1
            break
    keep = order[:last]
    return ids[keep], logits[keep]


def top_p(ids, logits, p: float, min_keep: int):
    """Nucleus: smallest prefix (by descending probability) whose mass reaches p."""
    if p >= 1.0:
        return ids, logits
    order = np.argsort(-logits, kind="stable")
    ids, logits = ids[order], logits[order]
    cum = np.cumsum(softmax(logits))
    hit = np.nonzero(cum >= p)[0]
    last = len(ids)
    for i in hit:
        if i + 1 >= min_keep:
            last = int(i) + 1
            break
    return ids[:last], logits[:last]


def min_p(ids, logits, p: float, min_keep: int):
    """Keep tokens whose probability is at least p times the most likely one's."""
    if p <= 0.0 or len(ids) == 0:
        return ids, logits
    keep = logits >= logits.max() + np.log(p)
    if keep.sum() < max(min_keep, 1):
        return ids, logits
    return ids[keep], logits[keep]


def temperature(ids, logits, temp: float):
    """Scale logits by 1/temp; temp <= 0 keeps only the single most likely token."""
    if temp <= 0.0:
        best = int(np.argmax(logits))
        return ids[best : best + 1], logits[best : best + 1]
    return ids, logits / np.float32(temp)


class Sampler:
    """A stateful chain: `sample(logits)` returns a token id, `accept(token)` records it for the penalties."""

    def __init__(self, params: SamplingParams | None = None, n_vocab: int | None = None):
        self.params = params or SamplingParams()
        self.params.validate()
        self.n_vocab = n_vocab
        last_n = self.params.repeat_last_n
        self.history: deque[int] = deque(maxlen=(n_vocab or 1 << 30) if last_n < 0 else max(last_n, 0))
        seed = self.params.seed
        self.seed = int(np.random.SeedSequence().entropy % (1 << 32)) if seed is None or seed < 0 else int(seed)
        self.rng = np.random.default_rng(self.seed)

    def reset(self) -> None:
        self.history.clear()
        self.rng = np.random.default_rng(self.seed)

    def accept(self, token: int) -> None:
        if self.history.maxlen:
            self.history.append(int(token))

    def sample(self, logits: np.ndarray) -> int:
        """logits: (>= n_vocab,) float32 of the last position."""
        p = self.params
        # only ids the vocabulary can decode are candidates (the output matrix may have padding rows)
        logits = np.array(logits[: self.n_vocab], dtype=np.float32, copy=True)  # (n_vocab,)
        for tok, bias in p.logit_bias.items():
            if 0 <= int(tok) < logits.shape[0]:
                logits[int(tok)] += bias
        apply_penalties(logits, self.history, p.repeat_penalty, p.frequency_penalty, p.presence_penalty)
        if p.temp <= 0.0:  # greedy: the remaining steps cannot change the argmax
            return int(np.argmax(logits))
        ids = np.arange(logits.shape[0])
        ids, cand = top_k(ids, logits, p.top_k, p.min_keep)
        ids, cand = typical_p(ids, cand, p.typical_p, p.min_keep)
        ids, cand = top_p(ids, cand, p.top_p, p.min_keep)
        ids, cand = min_p(ids, cand, p.min_p, p.min_keep)
        ids, cand = temperature(ids, cand, p.temp)
        probs = softmax(cand.astype(np.float64))
        return int(ids[self.rng.choice(len(ids), p=probs)])
