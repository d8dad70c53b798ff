"""`Llama`: the one public Python entry point, shaped like llama-cpp-python's class so users can switch.

Owns: loading (model + tokenizer from one GGUF), tokenize/detokenize, eval/scores, generate, and the
OpenAI-shaped `create_completion` / `__call__` (plain or streamed). Chat completion lives in chat.py.
Must not: implement math or sampling (model.py, sampling.py) or argument parsing (cli_run.py).

Threads: a `Llama` runs its model on the thread of its `Engine` (engine.py) only. Completions from several
threads at once go to the engine's `n_parallel` slots and are decoded together in one batched forward per step,
not one after the other; each gets what it would get alone. The low-level eval/generate/reset run on the engine
thread too, on a sequence of their own (`input_ids`/`scores` are that sequence's, not the completions').
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
import uuid
from typing import Iterator

import numpy as np

from .engine import CompletionRequest, Engine
from .errors import ContextError, GGUFError, GrammarError
from .generation import Session, Timings
from .gguf_file import GGUFFile
from .model import LlamaModel
from .sampling import Sampler, SamplingParams
from .tokenizer import detokenize_like_llama_cpp_python, load_tokenizer


def _grammar_text(grammar) -> str | None:
    """grammar= as llama-cpp-python takes it: a LlamaGrammar (or anything with .grammar), or GBNF text."""
    if grammar is None:
        return None
    text = getattr(grammar, "grammar", grammar)
    if not isinstance(text, str):
        raise TypeError(f"grammar must be GBNF text or a LlamaGrammar, got {type(grammar).__name__}")
    return text


def response_format_grammar(response_format: dict) -> str | None:
    """OpenAI / llama-cpp-python response_format -> GBNF (None for {"type": "text"})."""
    from .grammar import json_schema_to_gbnf

    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return json_schema_to_gbnf(response_format.get("schema", {}))
    if kind == "json_schema":
        spec = response_format.get("json_schema", {})
        return json_schema_to_gbnf(spec.get("schema", spec) if isinstance(spec, dict) else spec)
    raise GrammarError(f"response_format: unknown type {kind!r} (expected text, json_object or json_schema)")


class Llama:
    def __init__(
        self,
        model_path: str,
        n_ctx: int = 512,
        n_threads: int | None = None,
        seed: int = -1,
        logits_all: bool = False,
        vocab_only: bool = False,
        verbose: bool = True,
        n_batch: int = 512,
        n_parallel: int = 4,
        **_ignored,
    ):
        self.model_path = os.fspath(model_path)
        self.verbose = verbose
        self.seed = seed
        self.logits_all = logits_all
        self.timings = Timings()
        t0 = time.perf_counter()
        self._gguf = GGUFFile(self.model_path)
        self.tokenizer = load_tokenizer(self._gguf.metadata, self.model_path)
        self.model: LlamaModel | None = None
        self._session: Session | None = None
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        if not vocab_only:
            self.model = LlamaModel(self._gguf, n_ctx=n_ctx, n_threads=n_threads)
            # every slot may use the whole window (the cache grows as used); one more sequence for eval/generate
            self._engine = Engine(self.model, self.tokenizer, n_slots=max(1, int(n_parallel)), n_batch=n_batch,
                                  n_ubatch=n_batch, n_ctx_slot=self.model.n_ctx, queue_size=1 << 20, n_aux_seq=1)
            self._session = Session(self.model, n_batch=n_batch, seq_id=self._engine.aux_seq(0),
                                    timings=self.timings)
        self.timings.load_s = time.perf_counter() - t0
        self.timings.reset()
        self._scores: list[np.ndarray] = []  # logits rows of evaluated positions (all with logits_all, else last)
        if verbose and self.model is not None:
            cfg = self.model.cfg
            print(
                f"llamacpy: loaded {self.model_path} ({cfg.n_layer} layers, n_embd {cfg.n_embd}, n_vocab {cfg.n_vocab},"
                f" {self.model.describe()}) in {1e3 * self.timings.load_s:.0f} ms; n_ctx {self.model.n_ctx},"
                f" {self.model.n_threads} threads",
                file=sys.stderr,
            )

    # -- properties as in llama-cpp-python ------------------------------------------------------------
    def _require_model(self) -> Session:
        if self._session is None:
            raise RuntimeError(f"{self.model_path} was loaded with vocab_only=True: no model to evaluate")
        return self._session

    @property
    def n_tokens(self) -> int:
        return len(self._session.tokens) if self._session else 0

    @property
    def input_ids(self) -> np.ndarray:
        return np.asarray(self._session.tokens if self._session else [], dtype=np.int32)

    @property
    def scores(self) -> np.ndarray:
        """(n_tokens, n_vocab) logits of the evaluated positions with logits_all=True; else (1, n_vocab), the
        last evaluated position's."""
        if not self._scores:
            return np.zeros((0, self.n_vocab()), dtype=np.float32)
        return np.concatenate(self._scores, axis=0)

    def n_ctx(self) -> int:
        return self.model.n_ctx if self.model else 0

    def n_vocab(self) -> int:
        return self.tokenizer.n_vocab

    def token_bos(self) -> int:
        return self.tokenizer.bos_id if self.tokenizer.bos_id is not None else -1

    def token_eos(self) -> int:
        return self.tokenizer.eos_id if self.tokenizer.eos_id is not None else -1

    @property
    def metadata(self) -> dict:
        return {k: (v if isinstance(v, (str, int, float, bool)) else "...") for k, v in self._gguf.metadata.items()}

    # -- tokens ----------------------------------------------------------------------------------------
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens, prev_tokens=None, special: bool = False) -> bytes:
        """As llama-cpp-python: the tokens' pieces joined, one leading space dropped after BOS."""
        return detokenize_like_llama_cpp_python(self.tokenizer, tokens, special=special)

    # -- evaluation ------------------------------------------------------------------------------------
    def reset(self) -> None:
        if self._session:
            self._engine.run(self._session.reset)
        self._scores = []

    def eval(self, tokens) -> None:
        """Evaluate tokens after those already evaluated (as llama-cpp-python's `eval`)."""
        session = self._require_model()
        tokens = list(tokens)
        logits = self._engine.run(lambda: session.eval(tokens, all_logits=self.logits_all))
        if self.logits_all:
            del self._scores[len(session.tokens) - len(logits):]
            self._scores.append(logits)
        else:
            self._scores = [logits[-1:]]

    def generate(
        self,
        tokens,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        reset: bool = True,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_last_n: int = 64,
        seed: int | None = None,
        logit_bias: dict[int, float] | None = None,
        grammar=None,
        **kwargs,
    ) -> Iterator[int]:
        """Yield sampled token ids forever (the caller stops), reusing a cached common prefix."""
        session = self._require_model()
        sampler = self._sampler(self._sampling(temp, top_k, top_p, min_p, typical_p, repeat_penalty,
                                               frequency_penalty, presence_penalty, seed, logit_bias, repeat_last_n,
                                               grammar=grammar, **kwargs))
        gen = session.generate(list(tokens), sampler, n_predict=-1, reuse_prefix=reset, context_shift=False)
        done = object()
        while True:  # each step on the engine thread
            tok = self._engine.run(lambda: next(gen, done))
            if tok is done:
                return
            yield tok

    def _sampling(self, temp, top_k, top_p, min_p, typical_p, repeat_penalty, frequency_penalty, presence_penalty,
                  seed, logit_bias, repeat_last_n: int = 64, grammar=None, mirostat_mode: int = 0,
                  mirostat_tau: float = 5.0, mirostat_eta: float = 0.1, **extra) -> SamplingParams:
        """llama-cpp-python's keyword arguments -> SamplingParams (seed None = the instance's seed). `grammar` is
        GBNF text or a LlamaGrammar; any other SamplingParams field (top_n_sigma, xtc_probability, dry_multiplier,
        dynatemp_range, min_keep, n_probs, ...) may be given by name; llama-cpp-python's tfs_z and the like,
        which b4748 no longer has, are ignored."""
        fields = {f.name for f in dataclasses.fields(SamplingParams)}
        known = {k: v for k, v in extra.items() if k in fields and v is not None}
        return SamplingParams(
            temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, repeat_penalty=repeat_penalty,
            repeat_last_n=repeat_last_n, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            seed=self.seed if seed is None else seed,
            logit_bias={int(k): float(v) for k, v in (logit_bias or {}).items()},
            mirostat=int(mirostat_mode or 0), mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            grammar=_grammar_text(grammar), **known,
        )

    def _sampler(self, params: SamplingParams) -> Sampler:
        cfg = self.model.cfg if self.model is not None else None
        return Sampler(params, self.n_vocab(), vocab=self.tokenizer, n_ctx=self.n_ctx() or None,
                       n_ctx_train=cfg.n_ctx_train if cfg is not None else None)

    # -- completions -----------------------------------------------------------------------------------
    def create_completion(
        self,
        prompt: str | list[int],
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        repeat_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        stream: bool = False,
        echo: bool = False,
        logit_bias: dict[int, float] | None = None,
        logprobs: int | None = None,
        grammar=None,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        **kwargs,
    ):
        """OpenAI-shaped completion. Sampling follows llama.cpp's chain (sampling.Sampler); `grammar` (GBNF text or
        LlamaGrammar) constrains the output; `logprobs=N` reports, per generated token, the chain's probability of
        the token and its N most likely candidates (non-streamed responses; streamed chunks carry None)."""
        params = self._sampling(temperature, top_k, top_p, min_p, typical_p, repeat_penalty, frequency_penalty,
                                presence_penalty, seed, logit_bias, grammar=grammar, mirostat_mode=mirostat_mode,
                                mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, **kwargs)
        token_log: list | None = [] if logprobs is not None else None
        it = self._completion_chunks(prompt, max_tokens, params, [stop] if isinstance(stop, str) else list(stop or []),
                                     echo, token_log, int(logprobs or 0))
        if stream:
            return it
        text, finish, usage, head = "", None, None, None
        for chunk in it:
            head = head or chunk
            text += chunk["choices"][0]["text"]
            finish = chunk["choices"][0]["finish_reason"] or finish
            usage = chunk.get("usage", usage)
        lp = None
        if token_log is not None:
            offset = 0
            lp = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
            for piece, logp, top in token_log:
                lp["tokens"].append(piece)
                lp["text_offset"].append(offset)
                lp["token_logprobs"].append(logp)
                lp["top_logprobs"].append(top)
                offset += len(piece)
        return {
            "id": head["id"],
            "object": "text_completion",
            "created": head["created"],
            "model": self.model_path,
            "choices": [{"text": text, "index": 0, "logprobs": lp, "finish_reason": finish}],
            "usage": usage,
        }

    __call__ = create_completion

    def create_chat_completion(self, messages, response_format: dict | None = None, **kwargs):
        """OpenAI-shaped chat completion using the model's chat template (see chat.create_chat_completion).
        response_format {"type": "json_object"} (optionally with "schema") or {"type": "json_schema",
        "json_schema": {"schema": ...}} constrains the reply to JSON, as a grammar."""
        from .chat import create_chat_completion

        if response_format is not None:
            kwargs["grammar"] = response_format_grammar(response_format)
        return create_chat_completion(self, messages, **kwargs)

    def _completion_chunks(self, prompt, max_tokens, params: SamplingParams, stops: list[str], echo: bool,
                           token_log: list | None = None, n_top: int = 0):
        self._require_model()
        if isinstance(prompt, str):
            prompt_tokens = self.tokenize(prompt.encode("utf-8"), add_bos=True, special=True) if prompt else [
                self.token_bos()]
        else:
            prompt_tokens = [int(t) for t in prompt]
        n_ctx = self.n_ctx()
        if len(prompt_tokens) > n_ctx:
            raise ContextError(f"Requested tokens ({len(prompt_tokens)}) exceed context window of {n_ctx}")
        if max_tokens is None or max_tokens <= 0:
            max_tokens = n_ctx - len(prompt_tokens)
        max_tokens = min(max_tokens, n_ctx - len(prompt_tokens))
        cid = f"cmpl-{uuid.uuid4()}"
        created = int(time.time())

        def chunk(text: str, finish=None, **extra):
            c = {"id": cid, "object": "text_completion", "created": created, "model": self.model_path,
                 "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
            c.update(extra)
            return c

        if echo:
            yield chunk(self.detokenize(prompt_tokens).decode("utf-8", errors="replace"))
        if max_tokens <= 0:  # the prompt fills the window: nothing can be generated
            yield chunk("", "length", usage={"prompt_tokens": len(prompt_tokens), "completion_tokens": 0,
                                             "total_tokens": len(prompt_tokens)})
            return
        # the engine ends at n_ctx - len(prompt) tokens without context shift, as the old loop did
        req = CompletionRequest(prompt_tokens, n_predict=max_tokens, params=params, stop=stops, context_shift=False,
                                n_probs=n_top if token_log is not None else 0,
                                post_sampling_probs=token_log is not None)
        handle = self._engine.submit(req)
        n_out = 0
        finish = "length"
        try:
            for ev in handle:
                if ev.token is not None:
                    n_out += 1
                    if token_log is not None:
                        token_log.append(self._token_logprobs(ev, n_top))
                if ev.error:
                    raise RuntimeError(f"generation failed: {ev.error}")
                if ev.finish_reason is not None:
                    self._add_timings(ev.timings or {})
                    if ev.text:
                        yield chunk(ev.text)
                    finish = "stop" if ev.finish_reason == "stop" else "length"
                    break
                if ev.text:
                    yield chunk(ev.text)
        finally:
            handle.cancel()  # a consumer that stops early frees the slot (no-op once finished)
        usage = {"prompt_tokens": len(prompt_tokens), "completion_tokens": n_out,
                 "total_tokens": len(prompt_tokens) + n_out}
        yield chunk("", finish, usage=usage)

    def _add_timings(self, t: dict) -> None:
        with self._lock:
            tm = self.timings
            tm.prompt_s += t.get("prompt_ms", 0.0) / 1e3
            tm.n_prompt += t.get("prompt_n", 0)
            tm.eval_s += t.get("predicted_ms", 0.0) / 1e3
            tm.n_eval += max(0, t.get("predicted_n", 0) - 1)  # the first token comes with the prompt's logits
            tm.n_sample += t.get("predicted_n", 0)

    def _token_logprobs(self, ev, n_top: int):
        """(piece text, log p of the token in the chain, {piece: log p} of the chain's n_top best candidates)."""
        def text(t):
            return self.tokenizer.token_to_piece(t, special=False).decode("utf-8", errors="replace")

        def log(p):
            return float(np.log(p)) if p > 0 else float("-inf")

        top = {text(t): log(p) for t, p in (ev.probs or [])[:n_top]} if n_top > 0 else {}
        return text(ev.token), log(ev.token_prob), top

    def print_timings(self) -> None:
        print(self.timings.report(), file=sys.stderr)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
        self._engine = None
        self.model = None
        self._session = None

    def __del__(self):
        eng = getattr(self, "_engine", None)
        if eng is not None:
            eng.shutdown(timeout=0)
