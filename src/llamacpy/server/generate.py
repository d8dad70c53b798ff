"""Running completions through the engine for the HTTP routes: submit, collect or stream, cancel on disconnect.

Owns: turning a validated request into `CompletionRequest`s, mapping engine refusals onto HTTP errors
(QueueFull -> 503, a prompt over the context -> 400), accumulating `TokenEvent`s into `Completion`s, and the
streaming loops of /completion, /v1/completions and /v1/chat/completions (SSE shapes from responses.py).
Must not: parse request bodies (params.py) or register routes (routes.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.responses import Response

from . import responses as R
from .errors import APIError, invalid, unavailable
from .stream import Disconnected, EventBridge, RequestTimeout, sse, until_done_or_disconnect, watch_disconnect

CONTEXT_MESSAGE = ("the request exceeds the available context size, try increasing the context size or enable "
                   "context shift")


@dataclass
class Job:
    """One prompt of a request, ready for the engine."""

    prompt_tokens: list[int]
    n_predict: int
    params: object  # SamplingParams
    stop: list[str]
    n_keep: int = 0
    cache_prompt: bool = True
    id_slot: int = -1
    n_probs: int = 0
    ignore_eos: bool = False
    post_sampling_probs: bool = False  # n_probs from the sampler chain instead of softmax(logits)


def submit(state, job: Job, bridge: EventBridge):
    """Queue the job with the engine, its events going to `bridge`; engine refusals become APIErrors."""
    from ..engine import CompletionRequest, InvalidRequest, QueueFull
    from ..errors import ContextError

    if state.shutting_down:
        raise unavailable("server is shutting down")
    if not job.prompt_tokens:
        raise invalid("empty prompt: nothing to evaluate (the vocabulary adds no BOS)")
    n_ctx = state.n_ctx_slot
    if not state.config.context_shift and len(job.prompt_tokens) >= n_ctx:
        raise invalid(f"{CONTEXT_MESSAGE} (prompt {len(job.prompt_tokens)} tokens, slot context {n_ctx})")
    req = CompletionRequest(
        prompt_tokens=list(job.prompt_tokens), n_predict=job.n_predict, params=job.params, stop=list(job.stop),
        n_keep=job.n_keep, cache_prompt=job.cache_prompt, id_slot=job.id_slot, n_probs=job.n_probs,
        ignore_eos=job.ignore_eos, context_shift=state.config.context_shift,
        post_sampling_probs=job.post_sampling_probs,
    )
    try:
        bridge.handle = state.engine.submit(req, on_event=bridge.on_event)
    except QueueFull as e:
        raise unavailable(f"server busy: {e}") from None
    except ContextError as e:
        raise invalid(f"{CONTEXT_MESSAGE} ({e})") from None
    except (InvalidRequest, ValueError) as e:
        raise invalid(str(e)) from None
    return bridge


async def admitted(bridge) -> None:
    """Wait until the request was accepted where it runs; its refusal is raised as its APIError. Engine.submit
    decides at once (QueueFull is raised there); the Ray ingress's RemoteEngine hears it from a replica."""
    wait = getattr(bridge.handle, "wait_admitted", None)
    if wait is None:
        return
    err = await asyncio.to_thread(wait, bridge.timeout)  # undecided by then: the events' timeout applies
    if err is not None:
        bridge.cancel()
        raise err


def absorb(state, c: R.Completion, ev, n_probs: int) -> R.TokenProbs | None:
    """Add one TokenEvent to the completion; returns its probabilities (when asked for)."""
    tp = None
    if ev.token is not None:
        c.tokens.append(ev.token)
        c.n_decoded += 1
        if n_probs > 0 and ev.probs is not None:
            tp = token_probs(state.tokenizer, ev.token, ev.probs, n_probs, ev.token_prob)
            c.probs.append(tp)
    c.text += ev.text or ""
    if ev.finish_reason is not None:
        c.finish = ev.finish_reason
        c.stop_word = ev.stop_word
        c.timings = ev.timings or {}
        c.id_slot = int(c.timings.get("id_slot", -1))
        c.n_cached = c.n_prompt + c.n_predicted  # llama-server's tokens_cached: the slot's n_past
        c.error = ev.error
    return tp


def token_probs(tokenizer, token: int, probs, n_probs: int, token_prob: float | None = None) -> R.TokenProbs:
    top = [(int(t), tokenizer.token_to_piece(int(t), special=True), float(p)) for t, p in list(probs)[:n_probs]]
    prob = token_prob if token_prob is not None else next((p for t, _, p in top if t == token), None)
    return R.TokenProbs(token=token, piece=tokenizer.token_to_piece(token, special=True), prob=prob, top=top)


def final_error(c: R.Completion, state) -> APIError | None:
    """An engine error or a shutdown cancellation, as the error to report (None: a normal end)."""
    if c.finish == "error":
        return APIError(f"generation failed: {c.error or 'engine error'}", "server")
    if c.finish == "cancelled":
        return unavailable("server is shutting down" if state.shutting_down else "request cancelled")
    return None


async def collect(state, request, jobs: list[Job]) -> list[R.Completion]:
    """Run all jobs to completion (non-streaming); the client vanishing cancels them."""
    loop = asyncio.get_running_loop()
    bridges = []
    try:
        for j in jobs:
            bridges.append(submit(state, j, EventBridge(loop, state.config.timeout, final_only=True)))
        for b in bridges:
            await admitted(b)
    except APIError:
        for b in bridges:
            b.cancel()
        raise
    comps = [R.Completion(prompt_tokens=j.prompt_tokens, post_sampling=j.post_sampling_probs) for j in jobs]

    async def run_one(b: EventBridge, c: R.Completion, j: Job):
        async for ev in b.events():
            absorb(state, c, ev, j.n_probs)

    try:
        def cancel_all():
            for b in bridges:
                b.cancel()

        await until_done_or_disconnect(asyncio.gather(*(run_one(b, c, j) for b, c, j in zip(bridges, comps, jobs))),
                                       request.receive, cancel_all)
    except RequestTimeout as e:
        raise unavailable(str(e)) from None
    except Disconnected:  # nobody reads the answer; the requests are cancelled below
        raise APIError("client disconnected", "invalid_request") from None
    finally:
        for b in bridges:
            b.cancel()
    for c in comps:
        err = final_error(c, state)
        if err is not None:
            raise err
    return comps


class SSEResponse(Response):
    """text/event-stream from an async generator of bytes, stopped (and its request cancelled) the moment the
    client disconnects -- also while no token has been produced yet."""

    media_type = "text/event-stream"

    def __init__(self, gen, on_close):
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                            (b"x-accel-buffering", b"no")]  # no Content-Length: the body is streamed
        self.gen = gen
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})

        async def pump():
            async for chunk in self.gen:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        task = asyncio.ensure_future(pump())
        watcher = asyncio.ensure_future(watch_disconnect(receive))
        try:
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                exc = task.exception()
                if exc is not None and not isinstance(exc, OSError):
                    raise exc
        finally:
            self.on_close()  # first: the engine stops generating for a client that is gone
            watcher.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await self.gen.aclose()


async def stream(state, job: Job, chunks) -> SSEResponse:
    """Submit one job and stream it: `chunks(bridge, completion)` is an async generator of SSE bytes. A refusal
    (busy: 503) is the response's status, before any event."""
    bridge = submit(state, job, EventBridge(asyncio.get_running_loop(), state.config.timeout))
    await admitted(bridge)
    c = R.Completion(prompt_tokens=job.prompt_tokens, post_sampling=job.post_sampling_probs)
    return SSEResponse(_guard(state, chunks(bridge, c)), bridge.cancel)


async def _guard(state, gen):
    """Errors while streaming become an `error` event (llama-server's shape), never a broken stream."""
    try:
        async for chunk in gen:
            yield chunk
    except RequestTimeout as e:
        yield sse(unavailable(str(e)).body()["error"], event="error")
    except (Disconnected, asyncio.CancelledError):
        raise
    except APIError as e:
        yield sse(e.body()["error"], event="error")
    except Exception as e:  # an engine failure mid-stream
        yield sse(APIError(f"{type(e).__name__}: {e}", "server").body()["error"], event="error")


async def native_chunks(state, bridge, c, job: Job, index: int, settings: dict, prompt_text: str,
                        return_tokens: bool, response_fields):
    """/completion with stream: one event per token, then the final object (no [DONE], as llama-server)."""
    async for ev in bridge.events():
        tp = absorb(state, c, ev, job.n_probs)
        final = ev.finish_reason is not None
        if ev.token is not None or ev.text:
            yield sse(R.native_partial(ev.text or "", ev.token, c, index, [tp] if tp else None,
                                       c.timings if final else None))
    err = final_error(c, state)
    if err is not None:
        yield sse(err.body()["error"], event="error")
        return
    yield sse(R.native_final(c, index, True, state.config.model_name, settings, prompt_text, return_tokens,
                             response_fields))


async def oai_completion_chunks(state, bridge, c, job: Job, cid: str, model: str, usage_chunk: bool):
    async for ev in bridge.events():
        tp = absorb(state, c, ev, job.n_probs)
        if ev.text or tp is not None:
            yield sse(R.oai_completion_chunk(ev.text or "", cid, model, probs=[tp] if tp else None))
    err = final_error(c, state)
    if err is not None:
        yield sse(err.body())
    else:
        yield sse(R.oai_completion_chunk("", cid, model, R.finish_reason(c.finish),
                                         usage=None if usage_chunk else c.usage(), timings=c.timings))
        if usage_chunk:
            res = R.oai_completion_chunk("", cid, model, usage=c.usage())
            res["choices"] = []
            yield sse(res)
    yield sse("[DONE]")


async def chat_chunks(state, bridge, c, job: Job, cid: str, model: str, usage_chunk: bool):
    yield sse(R.chat_chunk({"role": "assistant"}, cid, model))
    async for ev in bridge.events():
        tp = absorb(state, c, ev, job.n_probs)
        if ev.text or tp is not None:
            yield sse(R.chat_chunk({"content": ev.text or ""}, cid, model, probs=[tp] if tp else None))
    err = final_error(c, state)
    if err is not None:
        yield sse(err.body())
    else:
        yield sse(R.chat_chunk({}, cid, model, R.finish_reason(c.finish),
                               usage=None if usage_chunk else c.usage(), timings=c.timings))
        if usage_chunk:
            yield sse(R.chat_chunk({}, cid, model, usage=c.usage(), choices=False))
    yield sse("[DONE]")
