"""The evaluation loop: prompt prefill in batches, token-by-token decode, context shift, stop conditions and
timings.

Owns: `Session` (a model + sequence state: the tokens in the cache, prefix reuse, `eval`, context shift with
n_keep) and `Timings` (llama.cpp's perf counters and their printout), plus `StopMatcher` for stop strings.
Must not: parse flags or print anything except through `Timings.report()`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .errors import ContextError
from .model import LlamaModel
from .sampling import Sampler


@dataclass
class Timings:
    """Cumulative perf counters, in seconds (llama.cpp's llama_perf_context_data)."""

    load_s: float = 0.0
    prompt_s: float = 0.0
    n_prompt: int = 0
    eval_s: float = 0.0
    n_eval: int = 0
    sample_s: float = 0.0
    n_sample: int = 0
    t_start: float = 0.0

    def reset(self) -> None:
        self.prompt_s = self.eval_s = self.sample_s = 0.0
        self.n_prompt = self.n_eval = self.n_sample = 0
        self.t_start = time.perf_counter()

    def report(self) -> str:
        """The lines llama.cpp prints at exit (llama_perf_sampler_print / llama_perf_context_print)."""

        def rate(s: float, n: int) -> str:
            ms_per = 1e3 * s / n if n else float("nan")
            tps = n / s if s > 0 else float("inf") if n else float("nan")
            return f"({ms_per:8.2f} ms per token, {tps:8.2f} tokens per second)"

        total_ms = 1e3 * (time.perf_counter() - self.t_start) + 1e3 * self.load_s
        lines = [
            f"llama_perf_sampler_print:    sampling time = {1e3 * self.sample_s:10.2f} ms / {self.n_sample:5d} runs"
            f"   {rate(self.sample_s, self.n_sample)}",
            f"llama_perf_context_print:        load time = {1e3 * self.load_s:10.2f} ms",
            f"llama_perf_context_print: prompt eval time = {1e3 * self.prompt_s:10.2f} ms / {self.n_prompt:5d} tokens"
            f" {rate(self.prompt_s, self.n_prompt)}",
            f"llama_perf_context_print:        eval time = {1e3 * self.eval_s:10.2f} ms / {self.n_eval:5d} runs"
            f"   {rate(self.eval_s, self.n_eval)}",
            f"llama_perf_context_print:       total time = {total_ms:10.2f} ms / {self.n_prompt + self.n_eval:5d} tokens",
        ]
        return "\n".join(lines)


class Session:
    """One sequence of a model: `tokens` mirrors what is in the KV cache (cell i = position i)."""

    def __init__(self, model: LlamaModel, n_batch: int = 2048, seq_id: int = 0, timings: Timings | None = None):
        self.model = model
        self.n_batch = max(1, int(n_batch))
        self.seq_id = seq_id
        self.tokens: list[int] = []
        self.timings = timings or Timings()
        self.n_shifts = 0

    @property
    def n_ctx(self) -> int:
        return self.model.n_ctx

    def reset(self) -> None:
        self.tokens = []
        self.model.kv.clear(self.seq_id)

    def truncate(self, n: int) -> None:
        """Forget cached tokens from position n on (prefix reuse)."""
        n = max(0, min(n, len(self.tokens)))
        self.tokens = self.tokens[:n]
        self.model.kv.truncate(self.seq_id, n)

    def eval(self, tokens, all_logits: bool = False) -> np.ndarray:
        """Append tokens to the cache, evaluating them in batches of n_batch. Returns the logits of the last
        token (1, n_vocab), or of every token (n, n_vocab) with all_logits."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("eval: no tokens")
        if len(self.tokens) + len(tokens) > self.n_ctx:
            raise ContextError(
                f"{len(self.tokens) + len(tokens)} tokens exceed the context window of {self.n_ctx} (use -c to enlarge it)"
            )
        is_prompt = len(tokens) > 1
        t0 = time.perf_counter()
        outs = []
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i : i + self.n_batch]
            logits = self.model.forward(np.asarray(chunk, dtype=np.int32), seq_id=self.seq_id, all_logits=all_logits)
            self.tokens.extend(chunk)
            if all_logits:
                outs.append(logits)
        dt = time.perf_counter() - t0
        if is_prompt:
            self.timings.prompt_s += dt
            self.timings.n_prompt += len(tokens)
        else:
            self.timings.eval_s += dt
            self.timings.n_eval += 1
        return np.concatenate(outs) if all_logits else logits

    def common_prefix(self, tokens: list[int]) -> int:
        n = 0
        for a, b in zip(self.tokens, tokens):
            if a != b:
                break
            n += 1
        return n

    def shift(self, n_keep: int) -> int:
        """Context shift: keep the first n_keep tokens, discard half of the rest (llama.cpp's main loop).
        Returns the number of tokens discarded."""
        n_past = len(self.tokens)
        n_keep = max(0, min(n_keep, n_past))
        n_discard = (n_past - n_keep) // 2
        if n_discard <= 0:
            raise ContextError(f"context shift impossible: --keep {n_keep} leaves no room in a window of {self.n_ctx}")
        self.model.shift_context(self.seq_id, n_keep, n_discard)
        del self.tokens[n_keep : n_keep + n_discard]
        self.n_shifts += 1
        return n_discard

    def sample(self, sampler: Sampler, logits: np.ndarray) -> int:
        t0 = time.perf_counter()
        tok = sampler.sample(logits[-1])
        sampler.accept(tok)
        self.timings.sample_s += time.perf_counter() - t0
        self.timings.n_sample += 1
        return tok

    def generate(
        self,
        prompt_tokens: list[int],
        sampler: Sampler,
        n_predict: int = -1,
        is_eog=lambda t: False,
        n_keep: int = 0,
        context_shift: bool = True,
        reuse_prefix: bool = True,
    ) -> Iterator[int]:
        """Evaluate the prompt (reusing a cached common prefix) and yield sampled tokens until an end-of-generation
        token (which is yielded last), n_predict tokens (-1 = unlimited), or a full window without context shift.
        Each yielded token is already accepted by the sampler; it is evaluated before the next one is sampled."""
        prompt_tokens = [int(t) for t in prompt_tokens]
        if len(prompt_tokens) > self.n_ctx:
            raise ContextError(f"prompt is too long ({len(prompt_tokens)} tokens, max {self.n_ctx})")
        n_reuse = self.common_prefix(prompt_tokens) if reuse_prefix else 0
        if n_reuse == len(prompt_tokens):  # need logits for the last prompt token
            n_reuse -= 1
        self.truncate(n_reuse)
        for t in prompt_tokens:
            sampler.accept(t)
        logits = self.eval(prompt_tokens[n_reuse:]) if n_reuse < len(prompt_tokens) else None
        n = 0
        while n_predict < 0 or n < n_predict:
            tok = self.sample(sampler, logits)
            n += 1
            yield tok
            if is_eog(tok) or (n_predict >= 0 and n >= n_predict):
                return
            if len(self.tokens) >= self.n_ctx:
                if not context_shift:
                    return
                self.shift(n_keep)
            logits = self.eval([tok])


class StopMatcher:
    """Finds stop strings in streamed text, holding back any tail that could still become a stop string."""

    def __init__(self, stops: list[str] | None):
        self.stops = [s for s in (stops or []) if s]
        self.text = ""
        self.emitted = 0
        self.stop_word: str | None = None  # the stop string found, once feed() returned stopped

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add decoded text; return (text safe to emit now, stopped)."""
        self.text += piece
        for s in self.stops:
            idx = self.text.find(s, max(0, self.emitted - len(s)))
            if idx != -1:
                first = min(
                    i for i in (self.text.find(x, max(0, self.emitted - len(x))) for x in self.stops) if i != -1
                )
                self.stop_word = next(x for x in self.stops if self.text.find(x, max(0, self.emitted - len(x))) == first)
                out = self.text[self.emitted : first] if first >= self.emitted else ""
                self.text = self.text[:first]
                self.emitted = len(self.text)
                return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        safe_end = max(self.emitted, len(self.text) - hold)
        out = self.text[self.emitted : safe_end]
        self.emitted = safe_end
        return out, False

    def flush(self) -> str:
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out
