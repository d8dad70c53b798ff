"""The serving engine: parallel slots over one model, decoded together in one batched forward per step.

Owns: `Engine` (one engine thread that makes every model call; slots = sequences of one KV cache; a bounded wait
queue; continuous batching: each step evaluates the next token of every generating slot plus prompt chunks of
slots still reading their prompt, in ONE `LlamaModel.forward_batch`), `CompletionRequest`, `TokenEvent`,
`RequestHandle`, `QueueFull`, `InvalidRequest`.
Must not: know HTTP or OpenAI shapes (server/ translates), parse flags, or print.

Threads: only the engine thread calls the model. numba's parallel kernels run on a thread pool whose workqueue
layer must never be entered from two Python threads at once (and OpenMP's pool is per calling thread), so every
forward -- completions and embeddings -- goes through this one thread; callers only exchange requests and events
with it through queues.

Slot choice (as llama-server): `id_slot` if given (the request waits while that slot is busy); else the idle
slot whose cached tokens share the longest prefix with the prompt, if that prefix is more than half the prompt
(llama-server's slot_prompt_similarity 0.5); else the least recently used idle slot. With `cache_prompt` only the
tokens after the common prefix are evaluated (at least the last prompt token, for its logits) -- when that prefix
is more than half the prompt; a smaller overlap is evaluated again (see below).

Prompt chunks: a prompt that is the only work goes in chunks of up to n_ubatch tokens (as many as a step of
~STEP_TARGET_S takes at the measured rate); beside other requests (or with requests waiting) in chunks of
n_chunk_busy (64), so a step stays short and a new request's first token is not held behind a long prompt; a
prompt that fits one chunk gets a step without the longer prompts' chunks (each held back one step at most).

Exactness: a row's logits do not depend on what else is in the batch (model.forward_batch). Chunk sizes are
multiples of model.PROMPT_BLOCK, and the model computes a chunk's attention per PROMPT_BLOCK block; when its
matrices compute prompt rows independently of the call (model.prompt_split_exact: the SIMD types), any such cuts
give the same bits. Other models keep one chunk size (min(n_ubatch, left) whatever the other slots do). Either
way at temperature 0 a request returns what it returns alone from the same cache state. A prompt evaluated from
scratch is therefore computed bit for bit as alone; one that reuses cached cells sees them as computed for an
earlier request (other chunk boundaries: BLAS rounds a row differently for other row counts, ~1e-5 relative).
Reusing only prefixes of more than half the prompt keeps independent requests (sharing BOS and a few words)
exact, at a cost of at most the half they share.
"""

from __future__ import annotations

import codecs
import queue
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .errors import ContextError, LlamacpyError
from .generation import StopMatcher
from .sampling import Sampler, SamplingParams

SLOT_PROMPT_SIMILARITY = 0.5  # llama-server's default --slot-prompt-similarity
# A prompt alone is read in chunks of up to n_ubatch tokens, but no larger than a step of about this many seconds
# at the measured rate: a request arriving meanwhile waits for one such step (then it shares small-chunk steps).
STEP_TARGET_S = 1.0


@dataclass
class CompletionRequest:
    prompt_tokens: list[int]
    n_predict: int = -1  # -1: until EOS / context limit
    params: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)  # stop strings (text)
    n_keep: int = 0  # tokens after BOS kept by a context shift (-1: the whole prompt)
    cache_prompt: bool = True
    id_slot: int = -1
    n_probs: int = 0  # top-n probabilities per generated token (softmax of the raw logits, as llama-server)
    ignore_eos: bool = False
    context_shift: bool = True  # False: a prompt that does not fit is refused; generation stops at the limit
    post_sampling_probs: bool = False  # n_probs from the sampler chain (llama-server's post_sampling_probs)


@dataclass
class TokenEvent:
    """One per generated token, then one final event (token None, finish_reason set). The final event's `text`
    may hold text that was held back (a possible stop-string prefix, a partial UTF-8 character). An end-of-
    generation token gets no event of its own: it ends the request ("stop") and counts in timings' predicted_n."""

    token: int | None
    text: str
    probs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error" on the final event
    stop_word: str | None = None
    timings: dict | None = None
    error: str | None = None
    token_prob: float | None = None  # the chain's probability of `token` in its draw (for logprobs)


class QueueFull(LlamacpyError):
    """Every slot is busy and the wait queue is full."""


class InvalidRequest(LlamacpyError, ValueError):
    """The request itself is unusable (empty prompt, token ids outside the vocabulary, bad id_slot)."""


class RequestHandle:
    """The caller's side of a request: iterate (or `get`) its TokenEvents; `cancel` frees its slot."""

    def __init__(self, engine: "Engine", req: CompletionRequest, on_event: Callable | None):
        self.engine = engine
        self.request = req
        self.id_task = 0
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._on_event = on_event
        self.cancelled = False
        self.done = False  # the final event was sent
        self._lock = threading.Lock()

    def _put(self, ev: TokenEvent) -> None:
        with self._lock:  # nothing after the final event (shutdown may end a request from another thread)
            if self.done:
                return
            if ev.finish_reason is not None:
                self.done = True
            if self._on_event is None:
                self._events.put(ev)
                return
            try:
                self._on_event(ev)
            except Exception:  # noqa: BLE001 -- the consumer is gone: stop the request, not the engine
                self.cancelled = True

    def get(self, timeout: float | None = None) -> TokenEvent | None:
        """The next event, or None after `timeout` seconds without one."""
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def __iter__(self):
        while True:
            ev = self._events.get()
            yield ev
            if ev.finish_reason is not None:
                return

    def cancel(self) -> None:
        """Stop the request: its slot is freed at the next step; the final event says "cancelled"."""
        if not self.done:
            self.cancelled = True
            self.engine._wake()


class _Slot:
    def __init__(self, sid: int):
        self.id = sid
        self.cache: list[int] = []  # tokens in this sequence's cells (cell i = position i)
        self.handle: RequestHandle | None = None
        self.state = "idle"  # idle | prompt | gen
        self.last_used = 0.0
        self.n_prompt = 0

    def reset_request(self) -> None:
        self.handle = None
        self.state = "idle"
        self.last_used = time.perf_counter()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def check_request(req: CompletionRequest, n_vocab: int, n_slots: int, n_ctx_slot: int) -> None:
    """What `Engine.submit` refuses (InvalidRequest / ContextError / ValueError from the params); on success the
    prompt is normalised to a list of ints. Shared with engines that forward requests elsewhere (ray/)."""
    toks = [int(t) for t in req.prompt_tokens]
    if not toks:
        raise InvalidRequest("the prompt is empty")
    bad = [t for t in toks if not 0 <= t < n_vocab]
    if bad:
        raise InvalidRequest(f"token id {bad[0]} out of range [0, {n_vocab})")
    if not -1 <= req.id_slot < n_slots:
        raise InvalidRequest(f"id_slot {req.id_slot} out of range [-1, {n_slots - 1}]")
    if not req.context_shift and len(toks) >= n_ctx_slot:
        raise ContextError(f"the request exceeds the available context size ({len(toks)} prompt tokens, "
                           f"{n_ctx_slot} per slot), try increasing it")
    req.params.validate()
    req.prompt_tokens = toks


class Engine:
    """Serve completions from `n_slots` parallel sequences of `model`, each of up to n_ctx_slot tokens
    (default: the model's n_ctx split evenly, as llama-server's -c / -np). The engine thread starts here."""

    def __init__(self, model, tokenizer, n_slots: int = 1, n_batch: int = 2048, queue_size: int = 64,
                 n_ctx_slot: int | None = None, n_ubatch: int = 512, n_aux_seq: int = 0, n_chunk_busy: int = 64):
        if n_slots < 1:
            raise ValueError(f"n_slots must be >= 1, got {n_slots}")
        self.model = model
        self.tokenizer = tokenizer
        self.n_slots = int(n_slots)
        self.n_batch = max(1, int(n_batch))
        self.n_ubatch = max(1, min(self.n_batch, int(n_ubatch)))  # largest prompt chunk per step
        # prompt chunks: n_chunk_alone tokens when a prompt is the only work, n_chunk_busy beside other requests;
        # both multiples of the model's PROMPT_BLOCK, so the cuts do not change a bit (model.prompt_split_exact).
        # Models whose matrices round a row by the call's size keep one chunk size (exact as before).
        from .model import PROMPT_BLOCK as block

        split_exact = getattr(model, "prompt_split_exact", None)
        if self.n_ubatch > block and split_exact is not None and split_exact():
            self.n_chunk_alone = self.n_ubatch // block * block
            self.n_chunk_busy = min(self.n_chunk_alone, max(block, int(n_chunk_busy) // block * block))
        else:
            self.n_chunk_alone = self.n_chunk_busy = self.n_ubatch
        self.queue_size = max(0, int(queue_size))
        self.n_ctx_slot = int(n_ctx_slot or model.n_ctx // self.n_slots)
        if self.n_ctx_slot < 4:
            raise ContextError(f"context per slot {self.n_ctx_slot} is too small ({model.n_ctx} over {n_slots} slots)")
        self._s_per_row: float | None = None  # measured seconds per row of prompt steps (_chunk_alone)
        self.n_vocab = tokenizer.n_vocab
        self.embd_seq = self.n_slots  # the sequence embeddings are computed in
        # sequences after it are left to callers of run() (aux_seq(i)): Llama's low-level eval/generate
        self.n_aux_seq = max(0, int(n_aux_seq))
        model.reset_cache(self.n_slots + 1 + self.n_aux_seq, self.n_ctx_slot)
        self.pooling = _pooling_type(model)
        self._slots = [_Slot(i) for i in range(self.n_slots)]
        self._waiting: deque[RequestHandle] = deque()
        self._jobs: deque = deque()
        self._cv = threading.Condition(threading.RLock())
        self._stop = False
        self._n_busy = 0
        self._task_id = 0
        self._m = dict(prompt_tokens_total=0, tokens_predicted_total=0, prompt_seconds_total=0.0,
                       tokens_predicted_seconds_total=0.0, n_decode_total=0, n_busy_slots_total=0,
                       requests_total=0)
        # the engine thread becomes the process's only OpenMP master: free this thread's worker pool (left by
        # the load's repack kernels), else libgomp throttles every worker's spin-wait (kernels.release_thread_pool)
        from .kernels.linear import release_thread_pool

        release_thread_pool()
        self._thread = threading.Thread(target=self._run, name="llamacpy-engine", daemon=True)
        self._thread.start()

    # -- callers' side (any thread) -------------------------------------------------------------------------
    def submit(self, req: CompletionRequest, on_event: Callable[[TokenEvent], None] | None = None) -> RequestHandle:
        """Queue a request. Events go to the returned handle's queue, or -- when `on_event` is given -- only to
        on_event(event), called on the engine thread: it must return at once (e.g. an asyncio bridge:
        `lambda ev: loop.call_soon_threadsafe(q.put_nowait, ev)`).
        Raises QueueFull when the wait queue is full, ContextError when the prompt does not fit a slot and
        req.context_shift is False, InvalidRequest for an empty prompt / bad token ids / bad id_slot."""
        check_request(req, self.n_vocab, self.n_slots, self.n_ctx_slot)
        h = RequestHandle(self, req, on_event)
        with self._cv:
            if self._stop:
                raise QueueFull("the engine is shut down")
            if len(self._waiting) >= self.queue_size + (self.n_slots - self._n_busy):
                raise QueueFull(f"all {self.n_slots} slots are busy and {len(self._waiting)} requests are waiting")
            self._task_id += 1
            h.id_task = self._task_id
            self._waiting.append(h)
            self._cv.notify()
        return h

    def embed(self, tokens: list[int]) -> np.ndarray:
        """(n_embd,) the final normed hidden states pooled (the GGUF's pooling_type: mean, cls or last; mean
        when it has none), computed on the engine thread between steps."""
        toks = [int(t) for t in tokens]
        if not toks:
            raise InvalidRequest("the input is empty")
        if any(not 0 <= t < self.n_vocab for t in toks):
            raise InvalidRequest(f"token id out of range [0, {self.n_vocab})")
        if len(toks) > self.n_ctx_slot:
            raise ContextError(f"input is too large to process ({len(toks)} tokens, context {self.n_ctx_slot})")
        return self._call(lambda: self._embed(toks))

    def aux_seq(self, i: int = 0) -> int:
        """The KV sequence id of auxiliary sequence i (0 <= i < n_aux_seq), free for run() callers."""
        if not 0 <= i < self.n_aux_seq:
            raise ValueError(f"auxiliary sequence {i} of {self.n_aux_seq}")
        return self.n_slots + 1 + i

    def run(self, fn):
        """fn() on the engine thread between steps; returns its result or raises its exception. For callers that
        need the model directly (on an aux_seq sequence): the model is never entered from two threads."""
        if threading.current_thread() is self._thread:
            return fn()
        return self._call(fn)

    def _call(self, fn):
        done = threading.Event()
        box = {}

        def job():
            try:
                box["v"] = fn()
            except BaseException as e:  # handed to the caller
                box["e"] = e
            done.set()

        with self._cv:
            if self._stop:
                raise QueueFull("the engine is shut down")
            self._jobs.append(job)
            self._cv.notify()
        done.wait()
        if "e" in box:
            raise box["e"]
        return box["v"]

    def slots(self) -> list[dict]:
        """llama-server /slots-like: one dict per slot."""
        out = []
        with self._cv:
            for sl in self._slots:
                h = sl.handle
                r = h.request if h else None
                out.append(dict(
                    id=sl.id, id_task=h.id_task if h else -1, n_ctx=self.n_ctx_slot, is_processing=h is not None,
                    state=sl.state, n_prompt_tokens=sl.n_prompt if h else 0, n_cached=len(sl.cache),
                    n_decoded=getattr(sl, "n_decoded", 0) if h else 0,
                    params=(dict(asdict(r.params), n_predict=r.n_predict, n_keep=r.n_keep, stop=list(r.stop),
                                 n_probs=r.n_probs, ignore_eos=r.ignore_eos, cache_prompt=r.cache_prompt)
                            if r else None)))
        return out

    def metrics(self) -> dict:
        with self._cv:
            m = dict(self._m)
            m["requests_processing"] = self._n_busy
            m["requests_deferred"] = len(self._waiting)
        kv = self.model.kv
        used = sum(len(sl.cache) for sl in self._slots)
        m["kv_cache_tokens"] = used
        m["kv_cache_usage_ratio"] = used / float(self.n_slots * self.n_ctx_slot)
        m["kv_cache_bytes"] = int(kv.nbytes)
        return m

    def shutdown(self, timeout: float = 2.0) -> None:
        """Stop the engine thread; everything in flight or waiting ends with finish_reason "cancelled"."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if threading.current_thread() is self._thread:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():  # still inside a long step: end the requests now, from here
            with self._cv:
                handles = [sl.handle for sl in self._slots if sl.handle is not None] + list(self._waiting)
            for h in handles:
                h.cancelled = True
                h._put(TokenEvent(None, "", finish_reason="cancelled"))

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    # -- the engine thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        from .kernels import set_num_threads

        set_num_threads(self.model.n_threads)  # numba's thread count is per calling thread
        while True:
            with self._cv:
                while not (self._stop or self._jobs or self._work_pending()):
                    self._cv.wait()
                if self._stop:
                    break
                jobs = list(self._jobs)
                self._jobs.clear()
            for job in jobs:
                job()
            try:
                self._step()
            except Exception as e:  # a failed step ends the requests in it, the engine goes on
                for sl in self._slots:
                    if sl.handle is not None:
                        self._finish(sl, "error", error=f"{type(e).__name__}: {e}")
                        self._reset_cache(sl)
        with self._cv:
            waiting = list(self._waiting)
            self._waiting.clear()
            jobs = list(self._jobs)
            self._jobs.clear()
        for job in jobs:
            job()  # embeddings asked for during shutdown still get an answer
        for h in waiting:
            h._put(TokenEvent(None, "", finish_reason="cancelled"))
        for sl in self._slots:
            if sl.handle is not None:
                self._finish(sl, "cancelled")

    def _work_pending(self) -> bool:
        if self._n_busy:
            return True
        return any(self._find_slot(h) is not None or h.cancelled for h in self._waiting)

    def _find_slot(self, h: RequestHandle) -> _Slot | None:
        req = h.request
        idle = [sl for sl in self._slots if sl.handle is None]
        if req.id_slot >= 0:
            sl = self._slots[req.id_slot]
            return sl if sl.handle is None else None
        if not idle:
            return None
        if req.cache_prompt:
            best, best_n = None, 0
            for sl in idle:
                n = _common_prefix(sl.cache, req.prompt_tokens)
                if n > best_n:
                    best, best_n = sl, n
            if best is not None and best_n > SLOT_PROMPT_SIMILARITY * len(req.prompt_tokens):
                return best
        return min(idle, key=lambda sl: sl.last_used)

    def _admit(self) -> None:
        with self._cv:
            keep = deque()
            while self._waiting:
                h = self._waiting.popleft()
                if h.cancelled:
                    h._put(TokenEvent(None, "", finish_reason="cancelled"))
                    continue
                sl = self._find_slot(h)
                if sl is None:
                    keep.append(h)
                    continue
                sl.handle = h
                sl.state = "prompt"
                self._n_busy += 1
                self._m["requests_total"] += 1
                try:
                    self._start(sl)
                except Exception as e:  # noqa: BLE001 -- reported on the request, the engine goes on
                    sl.n_prompt = sl.n_cached = sl.n_decoded = 0
                    sl.t_prompt, sl.t_gen = time.perf_counter(), None
                    self._finish(sl, "error", error=f"{type(e).__name__}: {e}")  # _cv is re-entrant
            self._waiting = keep

    def _start(self, sl: _Slot) -> None:
        """Set a newly assigned slot up: prompt truncation, cached prefix, sampler, stop matcher."""
        req = sl.handle.request
        prompt = list(req.prompt_tokens)
        n_ctx = self.n_ctx_slot
        bos = self.tokenizer.bos_id
        n_keep = len(prompt) if req.n_keep < 0 else req.n_keep
        sl.truncated = False
        if len(prompt) >= n_ctx:  # llama-server: keep n_keep, erase whole blocks of half the rest
            n_keep = min(n_keep, n_ctx - 4)
            n_block = (n_ctx - n_keep) // 2
            erased = (len(prompt) - n_keep - n_block) // n_block
            prompt = prompt[:n_keep] + prompt[n_keep + erased * n_block:]
            sl.truncated = True
        sl.prompt = prompt
        sl.n_prompt = len(prompt)
        sl.n_keep = n_keep + (1 if bos is not None and prompt and prompt[0] == bos and req.n_keep >= 0 else 0)
        n_reuse = _common_prefix(sl.cache, prompt) if req.cache_prompt else 0
        if n_reuse <= SLOT_PROMPT_SIMILARITY * len(prompt):
            n_reuse = 0  # a small overlap is evaluated again: the request is then computed exactly as alone
        if n_reuse == len(prompt):
            n_reuse -= 1  # the last prompt token is evaluated again for its logits
        self._truncate(sl, n_reuse)
        sl.n_cached = n_reuse
        sl.pending = prompt[n_reuse:]
        sl.deferred = False  # held back a step for a short prompt (_step)
        # with the vocabulary: grammars, DRY's sequence breakers and --ignore-eos need it (sampling.Sampler)
        sl.sampler = Sampler(req.params, self.n_vocab, vocab=self.tokenizer, n_ctx=self.n_ctx_slot,
                             n_ctx_train=self.model.cfg.n_ctx_train)
        for t in prompt:
            sl.sampler.accept(t)
        sl.matcher = StopMatcher(req.stop)
        sl.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        sl.n_decoded = 0
        sl.next_token = None
        sl.t_prompt = time.perf_counter()
        sl.t_gen = None

    def _truncate(self, sl: _Slot, n: int) -> None:
        n = max(0, min(n, len(sl.cache)))
        del sl.cache[n:]
        self.model.kv.truncate(sl.id, n)

    def _reset_cache(self, sl: _Slot) -> None:
        sl.cache = []
        self.model.kv.clear(sl.id)

    def _step(self) -> None:
        self._admit()
        for sl in self._slots:
            if sl.handle is not None and sl.handle.cancelled:
                self._finish(sl, "cancelled")
        toks, pos, seqs, who = [], [], [], []  # who: (slot, kind, n) per group, in batch order
        for sl in self._slots:
            if sl.state != "gen":
                continue
            if len(sl.cache) + 1 >= self.n_ctx_slot:  # no room for the next token
                if not sl.handle.request.context_shift:
                    self._finish(sl, "length")
                    continue
                self._shift(sl)
            toks.append(sl.next_token)
            pos.append(len(sl.cache))
            seqs.append(sl.id)
            who.append((sl, "gen", 1))
        budget = max(self.n_batch - len(toks), self.n_ubatch if not toks else 0)
        # the prompt with the fewest tokens left first: a short request beside a long prompt is read at once
        prompting = sorted((sl for sl in self._slots if sl.state == "prompt"),
                           key=lambda s: (len(s.pending), s.handle.id_task))
        with self._cv:
            waiting = bool(self._waiting)
        # beside other requests (or with some waiting), prompts go in small chunks so that no step is long
        alone = len(prompting) == 1 and not toks and not waiting
        n_chunk = self._chunk_alone() if alone else self.n_chunk_busy
        # a prompt that fits one chunk (a new short request) gets a step without the long prompts' chunks, so
        # its first token comes after a short step; a long prompt is held back one step at most
        short = any(len(sl.pending) <= n_chunk for sl in prompting)
        for sl in prompting:
            if short and len(sl.pending) > n_chunk and not sl.deferred:
                sl.deferred = True
                continue
            sl.deferred = False
            chunk = sl.pending[:n_chunk]
            if len(chunk) > budget:
                continue
            budget -= len(chunk)
            toks += chunk
            pos += range(len(sl.cache), len(sl.cache) + len(chunk))
            seqs += [sl.id] * len(chunk)
            who.append((sl, "prompt", len(chunk)))
        if not toks:
            return
        t0 = time.perf_counter()
        logits = self.model.forward_batch(toks, pos, seqs, "last")  # (len(who), n_vocab)
        dt = time.perf_counter() - t0
        if len(toks) > 8:  # seconds per row of prompt-sized steps (decode-only steps cost more per row)
            r = dt / len(toks)
            self._s_per_row = r if self._s_per_row is None else 0.7 * self._s_per_row + 0.3 * r
        n_gen = sum(1 for _, kind, _ in who if kind == "gen")
        n_prompt_rows = len(toks) - n_gen
        with self._cv:
            self._m["n_decode_total"] += 1
            self._m["n_busy_slots_total"] += self._n_busy
            # a step's time is split between its prompt and generated rows by row count
            self._m["prompt_seconds_total"] += dt * n_prompt_rows / len(toks)
            self._m["tokens_predicted_seconds_total"] += dt * n_gen / len(toks)
            self._m["prompt_tokens_total"] += n_prompt_rows
        i0 = 0
        for gi, (sl, kind, n) in enumerate(who):
            if kind == "gen":
                sl.cache.append(toks[i0])
            else:
                sl.cache += toks[i0:i0 + n]
                sl.pending = sl.pending[n:]
            i0 += n
            if kind == "prompt" and sl.pending:
                continue
            if kind == "prompt":
                sl.state = "gen"
                sl.t_gen = time.perf_counter()
                if sl.handle.request.n_predict == 0:  # the prompt is only cached (llama-server: n_predict 0)
                    self._finish(sl, "length")
                    continue
            self._sample(sl, logits[gi])

    def _chunk_alone(self) -> int:
        """Chunk of a prompt that is the only work: up to n_chunk_alone tokens, but no more than a step of about
        STEP_TARGET_S takes at the measured rate (a request that comes meanwhile waits for that step)."""
        if self.n_chunk_busy == self.n_chunk_alone or self._s_per_row is None:
            return self.n_chunk_busy
        n = int(STEP_TARGET_S / self._s_per_row) // self.n_chunk_busy * self.n_chunk_busy
        return max(self.n_chunk_busy, min(self.n_chunk_alone, n))

    def _shift(self, sl: _Slot) -> None:
        """Context shift of one slot (llama-server): keep n_keep cells, drop half of the rest."""
        n_past = len(sl.cache)
        n_keep = max(0, min(sl.n_keep, n_past - 2))
        n_discard = (n_past - n_keep) // 2
        self.model.shift_context(sl.id, n_keep, n_discard)
        del sl.cache[n_keep:n_keep + n_discard]

    def _sample(self, sl: _Slot, logits: np.ndarray) -> None:
        h = sl.handle
        req = h.request
        if h.cancelled:
            self._finish(sl, "cancelled")
            return
        tok = sl.sampler.sample(logits)
        # n_probs: softmax of the raw logits (llama-server's default), or with post_sampling_probs the chain's
        # probabilities of its first candidates (llama.cpp's common sampler; the Python API's logprobs)
        probs = token_prob = None  # nothing asked: no softmax over the vocabulary on the per-token path
        if req.post_sampling_probs:
            probs = sl.sampler.top_probs(req.n_probs) if req.n_probs > 0 else None
            token_prob = sl.sampler.token_prob(tok)
        elif req.n_probs > 0:
            probs, token_prob = _softmax_probs(logits[:self.n_vocab], req.n_probs, tok)
        sl.sampler.accept(tok)
        sl.n_decoded += 1
        with self._cv:
            self._m["tokens_predicted_total"] += 1
        if self.tokenizer.is_eog(tok) and not req.ignore_eos:
            self._finish(sl, "stop")
            return
        piece = self.tokenizer.token_to_piece(tok, special=False)
        text, stopped = sl.matcher.feed(sl.decoder.decode(piece))
        h._put(TokenEvent(tok, text, probs, token_prob=token_prob))
        if stopped:
            self._finish(sl, "stop", stop_word=sl.matcher.stop_word)
            return
        if req.n_predict >= 0 and sl.n_decoded >= req.n_predict:
            self._finish(sl, "length")
            return
        if not req.context_shift and len(sl.cache) + 1 >= self.n_ctx_slot:
            self._finish(sl, "length")
            return
        sl.next_token = tok

    def _finish(self, sl: _Slot, reason: str, stop_word: str | None = None, error: str | None = None) -> None:
        h = sl.handle
        tail = ""
        if reason in ("stop", "length") and stop_word is None and hasattr(sl, "matcher"):
            tail, _ = sl.matcher.feed(sl.decoder.decode(b"", final=True))
            tail += sl.matcher.flush()
        now = time.perf_counter()
        t_gen = sl.t_gen if sl.t_gen is not None else now
        prompt_ms = 1e3 * (t_gen - sl.t_prompt)
        pred_ms = 1e3 * (now - t_gen)
        n_prompt_eval = sl.n_prompt - sl.n_cached
        n_pred = sl.n_decoded
        timings = dict(
            prompt_n=n_prompt_eval, prompt_ms=prompt_ms,
            prompt_per_token_ms=prompt_ms / n_prompt_eval if n_prompt_eval else 0.0,
            prompt_per_second=1e3 * n_prompt_eval / prompt_ms if prompt_ms > 0 else 0.0,
            predicted_n=n_pred, predicted_ms=pred_ms,
            predicted_per_token_ms=pred_ms / n_pred if n_pred else 0.0,
            predicted_per_second=1e3 * n_pred / pred_ms if pred_ms > 0 else 0.0,
            n_prompt_tokens=sl.n_prompt, n_cached=sl.n_cached, id_slot=sl.id,
            truncated=getattr(sl, "truncated", False))
        if sl.state == "prompt":  # the cells of a half-read prompt are kept; cache mirrors them
            pass
        with self._cv:
            self._n_busy -= 1
            sl.reset_request()
        h._put(TokenEvent(None, tail, finish_reason=reason, stop_word=stop_word, timings=timings, error=error))

    def _embed(self, toks: list[int]) -> np.ndarray:
        kv = self.model.kv
        s = self.embd_seq
        kv.clear(s)
        hidden = []
        try:
            for i in range(0, len(toks), self.n_ubatch):
                chunk = toks[i:i + self.n_ubatch]
                hidden.append(self.model.forward_batch(chunk, range(i, i + len(chunk)), [s] * len(chunk), "hidden"))
        finally:
            kv.clear(s)
        hs = np.concatenate(hidden)  # (n, n_embd)
        if self.pooling == "cls":
            return hs[0].copy()
        if self.pooling == "last":
            return hs[-1].copy()
        return hs.astype(np.float64).mean(axis=0).astype(np.float32)


def _softmax_probs(logits: np.ndarray, n: int, token: int) -> tuple[list[tuple[int, float]], float]:
    """The n (>= 1) most likely tokens under softmax(logits), highest first, and `token`'s probability."""
    x = logits.astype(np.float64)
    p = np.exp(x - x.max())
    p /= p.sum()
    n = min(n, p.shape[0])
    idx = np.argpartition(-p, n - 1)[:n]
    idx = idx[np.argsort(-p[idx], kind="stable")]
    return [(int(i), float(p[i])) for i in idx], float(p[token])


def _pooling_type(model) -> str:
    """The GGUF's {arch}.pooling_type as llama.cpp names it (1 mean, 2 cls, 3 last); mean when absent/none."""
    md = model.gguf.metadata
    arch = md.get("general.architecture", "llama")
    v = md.get(f"{arch}.pooling_type")
    return {2: "cls", 3: "last"}.get(int(v) if v is not None else 1, "mean")
