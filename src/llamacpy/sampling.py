"""llama.cpp b4748's sampler chain (src/llama-sampling.cpp + common/sampling.cpp), step for step.

Owns: `SamplingParams` (every llama-cli sampling option, llama.cpp's defaults) and `Sampler`
(`sample(logits) -> id`, `accept(id)`, `reset()`): the chain logit-bias -> [penalties, dry, top_k, typ_p, top_p,
min_p, xtc, temperature (+dynatemp)] in `samplers` order -> dist; or top_k -> temp -> top-n-sigma -> dist when
top_n_sigma >= 0; or temp -> mirostat v1/v2. Each step keeps llama.cpp's arithmetic (float32 where it uses
float, sequential sums, the candidate array's order: softmax sorts by logit, min-p keeps the order, typical
reorders), its quirks (typical with min_keep 0 keeps every token; top_k <= 0 sorts all) and its RNG use (dist,
XTC and mirostat each own an mt19937 seeded with the seed; a draw over < 2 candidates uses no random numbers).
A grammar (grammar.py) is applied as common_sampler_sample does: sample from the chain, check the token, and only
if it is rejected run the chain again on grammar-masked logits. A chain that can only return the first maximum of
the biased logits (temperature <= 0 and nothing before it that could drop that token: `_greedy_bias`) returns it
from one pass over the row; its candidates are rebuilt by the chain only when n_probs asks for them.
Must not: evaluate the model, print, or parse flags.

Candidates are a `Candidates` object: parallel arrays ids (n,) int32, logit (n,) float32, p (n,) float32.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from .rng import MT19937, discrete_draw, resolve_seed

DEFAULT_SEED = -1
F32 = np.float32
NEG_INF = F32(-np.inf)

DEFAULT_SAMPLERS = ("penalties", "dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
SAMPLER_NAMES = {"dry": "dry", "top_k": "top_k", "top_p": "top_p", "typ_p": "typ_p", "min_p": "min_p",
                 "temperature": "temperature", "xtc": "xtc", "infill": "infill", "penalties": "penalties"}
SAMPLER_ALT_NAMES = {"top-k": "top_k", "top-p": "top_p", "nucleus": "top_p", "typical-p": "typ_p",
                     "typical": "typ_p", "typ-p": "typ_p", "typ": "typ_p", "min-p": "min_p", "temp": "temperature"}
SAMPLER_CHARS = {"d": "dry", "k": "top_k", "y": "typ_p", "p": "top_p", "m": "min_p", "t": "temperature",
                 "x": "xtc", "i": "infill", "e": "penalties"}


def samplers_from_names(text: str) -> list[str]:
    """--samplers "a;b;c": canonical or alternative names; unknown names are skipped (llama.cpp warns)."""
    out = []
    for name in text.split(";"):
        name = SAMPLER_NAMES.get(name) or SAMPLER_ALT_NAMES.get(name)
        if name:
            out.append(name)
    return out


def samplers_from_chars(text: str) -> list[str]:
    """--sampler-seq "kt": one letter per sampler (d k y p m t x i e); unknown letters are skipped."""
    return [SAMPLER_CHARS[c] for c in text if c in SAMPLER_CHARS]


@dataclass
class SamplingParams:
    """common_params_sampling's fields and defaults (names as in llama-cpp-python where it has them)."""

    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64  # -1 = the context size
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int = DEFAULT_SEED  # -1 (LLAMA_DEFAULT_SEED) = random
    min_keep: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1  # -1 = the context size
    dry_sequence_breakers: list[str] = field(default_factory=lambda: ["\n", ":", '"', "*"])
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    top_n_sigma: float = -1.0
    samplers: list[str] = field(default_factory=lambda: list(DEFAULT_SAMPLERS))
    ignore_eos: bool = False
    grammar: str | None = None  # GBNF text (JSON schemas are converted by the caller: grammar.json_schema_to_gbnf)
    n_probs: int = 0

    def validate(self) -> None:
        if self.repeat_last_n < -1:
            raise ValueError(f"repeat_last_n must be >= -1, got {self.repeat_last_n}")
        if self.dry_penalty_last_n < -1:
            raise ValueError(f"dry_penalty_last_n must be >= -1, got {self.dry_penalty_last_n}")
        if self.mirostat not in (0, 1, 2):
            raise ValueError(f"mirostat must be 0, 1 or 2, got {self.mirostat}")
        for name in self.samplers:
            if name not in SAMPLER_NAMES:
                raise ValueError(f"unknown sampler {name!r} (known: {', '.join(SAMPLER_NAMES)})")


# -- float32 helpers: libm's expf/logf/powf are (nearly always) correctly rounded; so is float64-then-round ----

def expf(x):
    return np.exp(np.asarray(x, dtype=np.float64)).astype(F32)


def logf(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(x, dtype=np.float64)).astype(F32)


def log2f(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log2(np.asarray(x, dtype=np.float64)).astype(F32)


def powf(x, y):
    with np.errstate(all="ignore"):
        return F32(np.power(np.float64(F32(x)), np.float64(F32(y))))


def f32_cumsum(x: np.ndarray) -> np.ndarray:
    """A float running sum `s += x[i]` in float32, left to right (np.add.accumulate is sequential)."""
    return np.add.accumulate(np.asarray(x, dtype=F32), dtype=F32)


def f32_sum(x: np.ndarray) -> F32:
    return f32_cumsum(x)[-1] if len(x) else F32(0.0)


# -- the candidate array -----------------------------------------------------------------------------

class Candidates:
    """llama_token_data_array: ids/logit/p of the live candidates, a `sorted` flag and the `selected` index."""

    __slots__ = ("ids", "logit", "p", "sorted", "selected")

    def __init__(self, ids: np.ndarray, logit: np.ndarray, p: np.ndarray | None = None, sorted_: bool = False):
        self.ids = np.asarray(ids, dtype=np.int32)  # (n,)
        self.logit = np.asarray(logit, dtype=F32)  # (n,)
        self.p = np.zeros(len(self.ids), F32) if p is None else np.asarray(p, dtype=F32)  # (n,)
        self.sorted = sorted_
        self.selected = -1

    @classmethod
    def from_logits(cls, logits: np.ndarray) -> "Candidates":
        logits = np.array(logits, dtype=F32, copy=True)
        return cls(np.arange(len(logits), dtype=np.int32), logits)

    @property
    def size(self) -> int:
        return len(self.ids)

    def take(self, idx) -> None:
        """Keep the candidates at idx (an index array or slice), in that order."""
        self.ids, self.logit, self.p = self.ids[idx], self.logit[idx], self.p[idx]

    def sort(self) -> None:
        """Descending by logit (llama.cpp: std::sort / partial_sort; equal logits keep their order here)."""
        order = np.argsort(-self.logit, kind="stable")
        self.take(order)
        self.sorted = True


def softmax_impl(cur: Candidates) -> None:
    """llama_sampler_softmax_impl: sort if unsorted, p = expf(l - max) / (float running sum)."""
    assert cur.size > 0
    if not cur.sorted:
        cur.sort()
    with np.errstate(invalid="ignore"):
        p = expf(cur.logit - cur.logit[0])
        cur.p = (p / f32_sum(p)).astype(F32)


def temp_impl(cur: Candidates, temp: float) -> None:
    if temp <= 0.0:  # keep the first maximal logit, the rest -inf
        best = int(np.argmax(cur.logit))
        keep = cur.logit[best]
        cur.logit = np.full(cur.size, NEG_INF, F32)
        cur.logit[best] = keep
        return
    cur.logit = (cur.logit / F32(temp)).astype(F32)


TOP_K_BUFFER_MAX = 256  # top-k of up to this many candidates by insertion into a sorted buffer (above: argpartition)


def top_k_impl(cur: Candidates, k: int) -> None:
    """k <= 0 means all; the set is sorted either way (b4748)."""
    if k <= 0:
        k = cur.size
    k = min(k, cur.size)
    if not cur.sorted:
        if k < cur.size:  # partial sort: the k best, then in order (equal logits by position)
            if k <= TOP_K_BUFFER_MAX:  # one pass with a sorted buffer (0.29 -> ~0.03 ms on 32000 logits)
                from ._sampling_kernels import top_k_positions

                part = top_k_positions(cur.logit, k)
            else:  # a stable sort: the same order (argpartition would pick any of the values tied at the k-th)
                part = np.argsort(-cur.logit, kind="stable")[:k]
            cur.take(part)
            cur.sorted = True
            return
        cur.sort()
    cur.take(slice(0, k))


# -- the samplers ------------------------------------------------------------------------------------

class Step:
    """One llama_sampler: `apply(cur)`, `accept(token)`, `reset()`."""

    def apply(self, cur: Candidates) -> None:
        raise NotImplementedError

    def accept(self, token: int) -> None:
        pass

    def reset(self) -> None:
        pass


class LogitBias(Step):
    def __init__(self, bias: list[tuple[int, float]]):
        self.bias = [(int(t), F32(b)) for t, b in bias]

    def apply(self, cur):
        for tok, b in self.bias:
            if 0 <= tok < cur.size and cur.ids[tok] == tok:
                cur.logit[tok] = cur.logit[tok] + b
            else:
                hit = np.nonzero(cur.ids == tok)[0]
                if len(hit):
                    cur.logit[hit[0]] = cur.logit[hit[0]] + b


class Penalties(Step):
    """Repetition (divide positive / multiply non-positive logits), frequency and presence penalties over the
    last `last_n` accepted tokens (prompt included)."""

    def __init__(self, last_n: int, repeat: float, freq: float, present: float):
        self.last_n = max(int(last_n), 0)
        self.repeat, self.freq, self.present = F32(repeat), F32(freq), F32(present)
        self.prev: deque[int] = deque(maxlen=self.last_n or None)
        self.count: Counter = Counter()

    def accept(self, token):
        if self.last_n == 0:
            return
        if len(self.prev) >= self.last_n:
            old = self.prev.popleft()
            self.count[old] -= 1
            if self.count[old] == 0:
                del self.count[old]
        self.prev.append(int(token))
        self.count[int(token)] += 1

    def apply(self, cur):
        if self.last_n == 0 or (self.repeat == 1 and self.freq == 0 and self.present == 0) or not self.count:
            return
        toks = np.fromiter(self.count.keys(), dtype=np.int64)
        cnts = np.fromiter(self.count.values(), dtype=np.int64)
        lut = np.zeros(max(int(toks.max()) + 1, int(cur.ids.max()) + 1 if cur.size else 1), np.int64)
        lut[toks] = cnts
        ids = cur.ids.astype(np.int64)
        c = np.where(ids < len(lut), lut[np.minimum(ids, len(lut) - 1)], 0)
        hit = np.nonzero(c > 0)[0]
        if len(hit) == 0:
            return
        lg = cur.logit[hit]
        lg = np.where(lg <= 0, lg * self.repeat, lg / self.repeat).astype(F32)
        cf = c[hit].astype(F32)
        cur.logit[hit] = (lg - (cf * self.freq + F32(1.0) * self.present)).astype(F32)
        cur.sorted = False

    def reset(self):
        self.prev.clear()
        self.count.clear()


class TopK(Step):
    def __init__(self, k: int):
        self.k = int(k)

    def apply(self, cur):
        top_k_impl(cur, self.k)


class TopP(Step):
    def __init__(self, p: float, min_keep: int):
        self.p, self.min_keep = F32(p), int(min_keep)

    def apply(self, cur):
        if self.p >= 1.0:
            return
        softmax_impl(cur)
        cum = f32_cumsum(cur.p)
        hit = np.nonzero(cum >= self.p)[0]
        hit = hit[hit + 1 >= self.min_keep]
        if len(hit):
            cur.take(slice(0, int(hit[0]) + 1))


class MinP(Step):
    def __init__(self, p: float, min_keep: int):
        self.p, self.min_keep = F32(p), int(min_keep)

    def apply(self, cur):
        if self.p <= 0.0 or cur.size == 0:
            return
        if not cur.sorted:
            min_logit = F32(max(F32(np.finfo(F32).min), cur.logit.max()) + logf(self.p))
            keep = np.nonzero(cur.logit >= min_logit)[0]
            if len(keep) >= self.min_keep:
                cur.take(keep)  # order kept, still unsorted
                return
            cur.sort()
        min_logit = F32(cur.logit[0] + logf(self.p))  # the first token always stays
        below = np.nonzero(cur.logit[1:] < min_logit)[0] + 1
        below = below[below >= self.min_keep]
        i = int(below[0]) if len(below) else cur.size
        cur.take(slice(0, i))


class Typical(Step):
    """Locally typical sampling. llama.cpp tests `i >= min_keep - 1` in size_t: with min_keep 0 that is never true,
    so every candidate is kept (only reordered)."""

    def __init__(self, p: float, min_keep: int):
        self.p, self.min_keep = F32(p), int(min_keep)

    def apply(self, cur):
        if self.p >= 1.0:
            return
        softmax_impl(cur)
        with np.errstate(invalid="ignore"):
            lp = logf(cur.p)
            entropy = f32_sum((-cur.p * lp).astype(F32))
            shifted = np.abs((-lp - entropy).astype(F32))
        order = np.argsort(shifted, kind="stable")
        cum = f32_cumsum(cur.p[order])
        last = len(order)
        if self.min_keep >= 1:
            hit = np.nonzero((cum > self.p) & (np.arange(len(order)) >= self.min_keep - 1))[0]
            if len(hit):
                last = int(hit[0]) + 1
        cur.take(order[:last])
        cur.sorted = False


class TempExt(Step):
    """Temperature; with dynatemp_range > 0 the entropy-scaled dynamic temperature."""

    def __init__(self, temp: float, delta: float = 0.0, exponent: float = 1.0):
        self.temp, self.delta, self.exponent = F32(temp), F32(delta), F32(exponent)

    def apply(self, cur):
        if self.delta <= 0:
            temp_impl(cur, self.temp)
            return
        min_temp = max(F32(0.0), F32(self.temp - self.delta))
        max_temp = F32(self.temp + self.delta)
        if cur.size <= 1:
            return
        max_entropy = -logf(F32(1.0) / F32(cur.size))
        softmax_impl(cur)
        pos = cur.p[cur.p > 0]  # entropy -= p * logf(p), term by term in float
        entropy = _f32_neg_running((pos * logf(pos)).astype(F32)) if len(pos) else F32(0.0)
        norm = F32(entropy / max_entropy)
        dyn = F32(min_temp + F32(max_temp - min_temp) * powf(norm, self.exponent))
        temp_impl(cur, float(dyn))
        with np.errstate(invalid="ignore", over="ignore"):
            pd = np.exp(cur.logit.astype(np.float64) - np.float64(cur.logit[0]))  # double
            p32 = pd.astype(F32)
            total = np.add.accumulate(pd)[-1]  # double running sum of the unrounded values
            cur.p = (p32.astype(np.float64) / total).astype(F32)


def _f32_neg_running(terms: np.ndarray) -> F32:
    """e = 0; e -= t[i] for each i, in float32."""
    return f32_cumsum(-terms)[-1]


class XTC(Step):
    """Exclude top choices: with probability `probability`, drop every token above `threshold` but the last."""

    def __init__(self, probability: float, threshold: float, min_keep: int, seed: int):
        self.probability, self.threshold, self.min_keep = F32(probability), F32(threshold), int(min_keep)
        self.seed = seed
        self.rng = MT19937(resolve_seed(seed))

    def apply(self, cur):
        if self.probability <= 0 or self.threshold > 0.5 or cur.size < 2:
            return
        chance = self.rng.uniform_float(0.0, 1.0)
        if chance > self.probability:
            return
        softmax_impl(cur)
        above = cur.p >= self.threshold
        pos_last = 0
        if above[0]:
            n_above = int(np.argmin(above)) if not above.all() else cur.size
            pos_last = n_above - 1
        if cur.size - pos_last >= self.min_keep and pos_last > 0:
            cur.take(slice(pos_last, None))

    def reset(self):
        self.rng = MT19937(resolve_seed(self.seed))


class TopNSigma(Step):
    def __init__(self, n: float):
        self.n = F32(n)

    def apply(self, cur):
        lg = cur.logit
        mx = lg.max()
        with np.errstate(invalid="ignore", over="ignore"):
            mean = F32(f32_sum(lg) / F32(cur.size))
            acc = _acc_f32_plus_f64(((lg - mean).astype(F32)).astype(np.float64) ** 2)
            std = F32(np.sqrt(F32(acc / F32(cur.size))))
            thr = F32(mx - F32(self.n * std))
            mask = lg < thr
        if mask.any():
            cur.logit = np.where(mask, NEG_INF, lg).astype(F32)
        softmax_impl(cur)


def _acc_f32_plus_f64(terms: np.ndarray) -> F32:
    """float acc = 0; acc += (double) term: each sum done in double, rounded to float."""
    from ._sampling_kernels import acc_f32_plus_f64

    return F32(acc_f32_plus_f64(np.ascontiguousarray(terms, dtype=np.float64)))


class Dist(Step):
    def __init__(self, seed: int):
        self.seed = seed
        self.rng = MT19937(resolve_seed(seed))

    def apply(self, cur):
        softmax_impl(cur)
        cur.selected = discrete_draw(self.rng, cur.p)

    def reset(self):
        self.rng = MT19937(resolve_seed(self.seed))


class Mirostat(Step):
    def __init__(self, n_vocab: int, seed: int, tau: float, eta: float, m: int = 100):
        self.n_vocab, self.seed = int(n_vocab), seed
        self.tau, self.eta, self.m = F32(tau), F32(eta), int(m)
        self.reset()

    def reset(self):
        self.mu = F32(F32(2.0) * self.tau)
        self.rng = MT19937(resolve_seed(self.seed))

    def apply(self, cur):
        softmax_impl(cur)
        n = min(self.m - 1, cur.size - 1)
        sum_tb, sum_tt = F32(0.0), F32(0.0)
        with np.errstate(all="ignore"):
            for i in range(n):
                t_i = logf(F32(i + 2) / F32(i + 1))
                b_i = logf(F32(cur.p[i] / cur.p[i + 1]))
                sum_tb = F32(sum_tb + F32(t_i * b_i))
                sum_tt = F32(sum_tt + F32(t_i * t_i))
            s_hat = F32(sum_tb / sum_tt)
            eps = F32(s_hat - F32(1.0))
            k = powf(F32(eps * powf(2.0, self.mu)) / F32(F32(1.0) - powf(F32(self.n_vocab), -eps)), F32(1.0) / s_hat)
        k_int = int(k) if np.isfinite(k) and abs(k) < 2**31 else -(2**31)
        top_k_impl(cur, max(k_int, 1))
        softmax_impl(cur)
        idx = discrete_draw(self.rng, cur.p)
        cur.selected = idx
        self._update(cur.p[idx])

    def _update(self, p):
        surprise = -log2f(F32(p))
        self.mu = F32(self.mu - F32(self.eta * F32(surprise - self.tau)))


class MirostatV2(Mirostat):
    def __init__(self, seed: int, tau: float, eta: float):
        super().__init__(0, seed, tau, eta)

    def apply(self, cur):
        softmax_impl(cur)
        with np.errstate(divide="ignore"):
            over = np.nonzero(-log2f(cur.p) > self.mu)[0]
        size = int(over[0]) if len(over) else cur.size
        cur.take(slice(0, max(size, 1)))
        softmax_impl(cur)
        idx = discrete_draw(self.rng, cur.p)
        cur.selected = idx
        self._update(cur.p[idx])


class DRY(Step):
    """DRY ("don't repeat yourself"): penalise tokens that would extend a repeat of the recent context
    (ported from koboldcpp in llama.cpp; Z-algorithm over the reversed window, sequence breakers)."""

    def __init__(self, vocab, context_size: int, multiplier: float, base: float, allowed_length: int,
                 penalty_last_n: int, breakers: list[str]):
        self.total = int(context_size)
        self.multiplier, self.base = F32(multiplier), F32(base)
        self.allowed, self.last_n = int(allowed_length), int(penalty_last_n)
        self.enabled = self.multiplier != 0 and self.base >= 1 and self.last_n != 0
        eff = self.total if self.last_n == -1 else max(self.last_n, 0)
        self.tokens: deque[int] = deque(maxlen=eff if self.enabled else 0)
        self.breakers: dict[int, list[list[int]]] = {}
        if self.enabled and breakers:
            if vocab is None:
                raise ValueError("DRY sequence breakers need the vocabulary (pass vocab= to Sampler)")
            for b in breakers:
                if b:
                    self._add_breaker(vocab, b.encode("utf-8")[:40])

    def _add_breaker(self, vocab, s: bytes, max_tail: int = 20) -> None:
        """get_overlapping_token_sequences: tokens containing s are single-token breakers; tokens ending in a
        prefix of s get the tokenization of the rest of s as tail."""
        for tok in range(vocab.n_vocab):
            word = vocab.detokenize([tok], remove_special=False, unparse_special=True)
            tails = self.breakers.setdefault(tok, [])
            if s in word:
                if [] not in tails:
                    tails.append([])
                continue
            pos = word.find(s[:1])
            while pos != -1:
                i = 1
                match = True
                while i < len(s) and i + pos < len(word):
                    if word[pos + i] != s[i]:
                        match = False
                        break
                    i += 1
                if match:
                    tail = vocab.tokenize(s[i:], add_bos=False, special=False)[:max_tail]
                    if tail not in tails:
                        tails.append(tail)
                pos = word.find(s[:1], pos + 1)
            if not tails:
                del self.breakers[tok]

    def accept(self, token):
        if self.enabled:
            self.tokens.append(int(token))

    def reset(self):
        self.tokens.clear()

    def apply(self, cur):
        if not self.enabled:
            return
        eff = self.total if self.last_n == -1 else max(self.last_n, 0)
        n = min(len(self.tokens), eff, self.total)
        if n <= self.allowed:
            return
        toks = list(self.tokens)
        rat = lambda i: toks[len(toks) - 1 - i]  # noqa: E731  (i-th most recent)
        rep_limit = n
        for i in range(n):
            seqs = self.breakers.get(rat(i))
            if not seqs:
                continue
            longest = -1
            for tail in seqs:
                L = len(tail)
                if L > longest and L <= i and all(tail[o] == rat(i - o - 1) for o in range(L)):
                    longest = L
            if longest >= 0:
                rep_limit = i - longest
                break
        if rep_limit < self.allowed:
            return
        count = [0] * n
        last = n - 1
        rt = lt = 0
        for k in range(1, n):
            if k > rt:
                m = 0
                while m + k < n and rat(m) == rat(m + k):
                    m += 1
                count[last - k] = min(m, rep_limit)
                if m > 0:
                    lt, rt = k, k + m - 1
            else:
                p = k - lt
                right = rt - k + 1
                if count[last - p] < right:
                    count[last - k] = min(count[last - p], rep_limit)
                else:
                    i = rt + 1
                    while i < n and rat(i) == rat(i - k):
                        i += 1
                    count[last - k] = min(i - k, rep_limit)
                    lt, rt = k, i - 1
        max_rep: dict[int, int] = {}
        for i in range(n - 1):
            r = count[i]
            if r >= self.allowed:
                tok = rat(n - 2 - i)
                if max_rep.get(tok, -1) < r:
                    max_rep[tok] = r
        if not max_rep:
            cur.sorted = False
            return
        max_exp = int(F32(88.7228391) / F32(np.log(np.float64(self.base)))) if self.base > F32(1.000001) else 0
        for j, tok in enumerate(cur.ids.tolist()):
            r = max_rep.get(tok)
            if r is None or [] in self.breakers.get(tok, []):
                continue
            e = r - self.allowed
            if max_exp > 0 and e > max_exp:
                e = max_exp
            pen = F32(np.float64(self.multiplier) * np.power(np.float64(self.base), e))
            cur.logit[j] = F32(cur.logit[j] - pen)
        cur.sorted = False


# -- the chain ---------------------------------------------------------------------------------------

def _greedy_bias(chain: list, grammar, n_vocab: int | None) -> list[tuple[int, F32]] | None:
    """The logit biases (in range, in order) of a chain whose token is the first maximum of the biased logits
    whatever the logits are (as long as that maximum is finite) -- None for any other chain. That is a chain of
    LogitBias, then steps that each keep the best candidate (top-k, top-p, min-p: a top-k / softmax sort is
    stable, min-p keeps the first or the order) or that do nothing with these parameters (penalties, DRY, typical,
    XTC), with temperature <= 0 (no dynamic range: "keep the first maximal logit, the rest -inf") and Dist last,
    whose draw from that one-hot distribution picks the best without regard to its random number. Such a chain
    draws the token in one pass over the logits instead of the candidate arrays and sorts (~0.3 ms a token at
    32000 logits on a cold cache: the server samples every slot's token between steps); `Sampler.last` replays
    the chain when its candidates are asked for (n_probs)."""
    if grammar is not None or len(chain) < 2 or not isinstance(chain[0], LogitBias) or not isinstance(chain[-1], Dist):
        return None
    greedy = False
    for s in chain[1:-1]:
        if isinstance(s, TempExt):
            if s.delta > 0 or s.temp > 0:
                return None
            greedy = True
        elif isinstance(s, Penalties):
            if not (s.last_n == 0 or (s.repeat == 1 and s.freq == 0 and s.present == 0)):
                return None
        elif isinstance(s, DRY):
            if s.enabled:
                return None
        elif isinstance(s, Typical):
            if s.p < 1.0:
                return None
        elif isinstance(s, XTC):
            if not (s.probability <= 0 or s.threshold > 0.5):
                return None
        elif not isinstance(s, (TopK, TopP, MinP)):
            return None
    if not greedy or n_vocab is None:
        return None
    return [(t, b) for t, b in chain[0].bias if 0 <= t < n_vocab]  # LogitBias: an id outside the row matches nothing


class Sampler:
    """common_sampler: the chain (and an optional grammar). `sample(logits)` returns a token id,
    `accept(token)` feeds penalties/DRY (and the grammar, for the token `sample` just returned), `reset()`
    restarts the RNGs, mirostat and the grammar."""

    def __init__(self, params: SamplingParams | None = None, n_vocab: int | None = None, *, vocab=None,
                 n_ctx: int | None = None, n_ctx_train: int | None = None):
        self.params = p = params or SamplingParams()
        p.validate()
        self.vocab = vocab
        self.n_vocab = n_vocab if n_vocab is not None else (vocab.n_vocab if vocab is not None else None)
        n_ctx = n_ctx or 1 << 20
        self.seed = resolve_seed(p.seed)  # one seed for every RNG of the chain, as common_params_sampling.seed
        seed = self.seed
        bias = [(int(t), float(b)) for t, b in p.logit_bias.items()]
        if p.ignore_eos:
            if vocab is None:
                raise ValueError("ignore_eos needs the vocabulary (pass vocab= to Sampler)")
            bias += [(t, float("-inf")) for t in sorted(vocab.eog_ids)]
        chain: list[Step] = [LogitBias(bias)]
        temp = p.temp
        if p.mirostat == 0:
            if p.top_n_sigma >= 0:
                chain += [TopK(p.top_k), TempExt(temp), TopNSigma(p.top_n_sigma)]
            else:
                for name in p.samplers:
                    chain.append(self._step(name, p, seed, vocab, n_ctx, n_ctx_train))
            chain.append(Dist(seed))
        elif p.mirostat == 1:
            chain += [TempExt(temp), Mirostat(self.n_vocab or 0, seed, p.mirostat_tau, p.mirostat_eta, 100)]
        else:
            chain += [TempExt(temp), MirostatV2(seed, p.mirostat_tau, p.mirostat_eta)]
        self.chain = chain
        self.grammar = None
        if p.grammar:
            if vocab is None:
                raise ValueError("a grammar needs the vocabulary (pass vocab= to Sampler)")
            from .grammar import Grammar

            self.grammar = Grammar(p.grammar, vocab, n_vocab=self.n_vocab)
        self._pending: int | None = None
        self._last: Candidates | None = None  # the candidates the last token was drawn from (for n_probs)
        self._replay: np.ndarray | None = None  # a greedy draw's logits row: `last` is rebuilt from it on demand
        self._greedy_bias = _greedy_bias(chain, self.grammar, self.n_vocab)

    @staticmethod
    def _step(name, p: SamplingParams, seed, vocab, n_ctx, n_ctx_train) -> Step:
        if name == "penalties":
            last_n = n_ctx if p.repeat_last_n == -1 else p.repeat_last_n
            return Penalties(last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty)
        if name == "dry":
            last_n = n_ctx if p.dry_penalty_last_n == -1 else p.dry_penalty_last_n
            return DRY(vocab, n_ctx_train or n_ctx, p.dry_multiplier, p.dry_base, p.dry_allowed_length, last_n,
                       p.dry_sequence_breakers)
        if name == "top_k":
            return TopK(p.top_k)
        if name == "typ_p":
            return Typical(p.typical_p, p.min_keep)
        if name == "top_p":
            return TopP(p.top_p, p.min_keep)
        if name == "min_p":
            return MinP(p.min_p, p.min_keep)
        if name == "xtc":
            return XTC(p.xtc_probability, p.xtc_threshold, p.min_keep, seed)
        if name == "temperature":
            return TempExt(p.temp, p.dynatemp_range, p.dynatemp_exponent)
        raise ValueError(f"sampler {name!r} is not supported here")

    # -- the common_sampler interface --------------------------------------------------------------------
    @property
    def history(self):
        for s in self.chain:
            if isinstance(s, Penalties):
                return s.prev
        return deque()

    def reset(self) -> None:
        for s in self.chain:
            s.reset()
        if self.grammar is not None:
            self.grammar.reset()
        self._pending = None

    def accept(self, token: int, accept_grammar: bool | None = None) -> None:
        """Record an accepted token. The grammar takes it when accept_grammar is True, or (None) when it is the
        token `sample` just returned -- prompt tokens fed here are not grammar input (llama.cpp: accept_grammar
        false for the prompt)."""
        token = int(token)
        if accept_grammar is None:
            accept_grammar = self._pending is not None and token == self._pending
        self._pending = None
        if accept_grammar and self.grammar is not None:
            self.grammar.accept(token)
        for s in self.chain:
            s.accept(token)

    @property
    def last(self) -> Candidates | None:
        """The candidates the last token was drawn from, after the chain (for n_probs)."""
        if self._replay is not None:  # a greedy draw: the chain's candidates, built now (see _greedy_bias)
            row, self._replay = self._replay, None
            cur = Candidates.from_logits(row)
            for s in self.chain[:-1]:  # every step but Dist: none of them draws a random number here
                s.apply(cur)
            softmax_impl(cur)  # Dist's softmax; its draw from the one-hot distribution picks the first
            cur.selected = 0
            self._last = cur
        return self._last

    @last.setter
    def last(self, cur: Candidates | None) -> None:
        self._replay = None
        self._last = cur

    def _run_chain(self, cur: Candidates) -> int:
        for s in self.chain:
            s.apply(cur)
        self.last = cur
        return int(cur.ids[cur.selected])

    def _greedy(self, row: np.ndarray) -> int:
        """The greedy chain's token without running it (see _greedy_bias), or -1 where the chain must run: the
        first maximum of the biased logits, if it is finite (np.argmax stops at a NaN)."""
        if row.shape[0] != self.n_vocab:
            return -1
        lg = row
        if self._greedy_bias:
            lg = row.copy()
            for tok, b in self._greedy_bias:
                lg[tok] = lg[tok] + b
        i = int(np.argmax(lg))
        if not np.isfinite(lg[i]):
            return -1
        self._replay = row
        return i

    def sample(self, logits: np.ndarray) -> int:
        """logits: (>= n_vocab,) float32 of the last position."""
        row = np.asarray(logits[: self.n_vocab] if self.n_vocab else logits, dtype=F32)  # (n_vocab,)
        tok = self._greedy(row) if self._greedy_bias is not None else -1
        if tok >= 0:
            self._pending = tok
            return tok
        tok = self._run_chain(Candidates.from_logits(row))
        if self.grammar is not None and not self.grammar.allows(tok):
            cur = Candidates.from_logits(row)
            self.grammar.apply(cur)
            tok = self._run_chain(cur) if np.isfinite(cur.logit).any() else -1
            if tok < 0 or not self.grammar.allows(tok):  # every allowed token was masked: end cleanly with EOS
                if self.params.ignore_eos:  # llama.cpp aborts here; looping on a masked EOS would never end
                    from .errors import GrammarError

                    raise GrammarError("the grammar is complete and only end-of-generation can follow, "
                                       "which --ignore-eos forbids")
                tok = self.grammar.forced_end_token()
        self._pending = tok
        return tok

    def top_probs(self, n: int) -> list[tuple[int, float]]:
        """The first n candidates of the last draw with the chain's probabilities (llama.cpp's n_probs)."""
        if self.last is None:
            return []
        cur = self.last
        return [(int(cur.ids[i]), float(cur.p[i])) for i in range(min(n, cur.size))]

    def token_prob(self, token: int) -> float:
        """The chain's probability of `token` in the last draw (0 when it was filtered out)."""
        if self.last is None:
            return 0.0
        hit = np.nonzero(self.last.ids == token)[0]
        return float(self.last.p[hit[0]]) if len(hit) else 0.0
