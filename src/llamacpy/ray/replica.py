"""One model replica of the Ray Serve deployment: the server's own ServerState and Engine, in a Ray actor.

Owns: `LlamaReplica` -- loads the model exactly as `llamacpy serve` does (server.state.ServerState.load: the same
GGUF reader, tokenizer, chat template and `Engine`), and exposes the engine to the ingress as Ray calls:
`generate(request, route_key)` streams lists of the engine's own `TokenEvent`s (the first item says whether the
engine accepted the request), `embed`, `snapshot` (slots + counters + who this replica is), `info` (model facts
the ingress reports); `check_health` (Ray restarts a replica whose engine thread died); per-replica Prometheus
metrics recorded through `ray.serve.metrics` (Ray adds the deployment/replica tags and exports them).
Must not: parse HTTP or shape responses (the ingress runs the server's routes) or decode outside the engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket

METRICS_PERIOD_S = 2.0
GAUGES = ("requests_processing", "requests_deferred", "kv_cache_tokens", "kv_cache_usage_ratio")
COUNTERS = (("prompt_tokens", "prompt_tokens_total"), ("tokens_predicted", "tokens_predicted_total"),
            ("n_decode", "n_decode_total"), ("requests", "requests_total"))


def on_this_node(cfg):
    """The config with `model` a path on this node: a model given by -hf / -mu is downloaded into (or found in)
    this node's own cache, so replicas on other machines need no shared disk; a -m path is used as it is."""
    if not cfg.model_source:
        return cfg
    from types import SimpleNamespace

    from ..model_source import resolve_model

    return dataclasses.replace(cfg, model=resolve_model(SimpleNamespace(model=None, **cfg.model_source)))


class LlamaReplica:
    """Deployed by deploy.build_app with `serve.deployment(...)` options; one engine per replica."""

    def __init__(self, cfg):
        from ray import serve

        from ..server.state import ServerState

        cfg = on_this_node(cfg)
        self.cfg = cfg
        self.state = ServerState(cfg)
        self.state.load()  # the same load as `llamacpy serve`; a bad file fails the replica (Ray reports it)
        self.state.status = "ready"
        ctx = serve.get_replica_context()
        self.replica_id = ctx.replica_id.unique_id
        self.who = {"replica": self.replica_id, "pid": os.getpid(), "host": socket.gethostname()}
        self._metrics = None
        self._seen = {}
        self._metrics_task = None
        self._record_metrics()  # every replica's series exist from the start (0 until it serves)

    # -- generation -------------------------------------------------------------------------------------------
    async def generate(self, request, route_key=None):
        """Yields {"accepted": who} or {"refused": kind, "message": str} first, then lists of TokenEvents (all
        that were ready), the last list ending with the final event. Cancelling the call cancels the request."""
        from ..engine import QueueFull
        from ..errors import ContextError

        self._start_metrics()
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def on_event(ev):  # engine thread: hand over and return at once
            loop.call_soon_threadsafe(q.put_nowait, ev)

        try:
            handle = self.state.engine.submit(request, on_event=on_event)
        except QueueFull as e:
            yield {"refused": "busy", "message": str(e)}
            return
        except (ContextError, ValueError) as e:
            yield {"refused": "invalid", "message": str(e), "context": isinstance(e, ContextError)}
            return
        eng = self.state.engine  # the ingress's snapshot of this replica (off the loop: slots() takes the lock)
        slots, metrics = await asyncio.to_thread(lambda: (eng.slots(), eng.metrics()))
        yield {"accepted": dict(self.who, slots=slots, metrics=metrics)}
        try:
            while True:
                batch = [await q.get()]
                while not q.empty():
                    batch.append(q.get_nowait())
                yield batch
                if batch[-1].finish_reason is not None:
                    return
        finally:
            if not handle.done:
                handle.cancel()
            self._record_metrics()

    async def embed(self, tokens):
        v = await asyncio.to_thread(self.state.engine.embed, tokens)
        return [float(x) for x in v]

    async def snapshot(self) -> dict:
        eng = self.state.engine
        slots, metrics = await asyncio.to_thread(lambda: (eng.slots(), eng.metrics()))
        return dict(self.who, slots=slots, metrics=metrics)

    async def info(self) -> dict:
        st = self.state
        return dict(self.who, n_ctx_slot=st.n_ctx_slot, model_meta=st.model_meta, pooling=st.pooling)

    def check_health(self):
        t = getattr(self.state.engine, "_thread", None)
        if t is not None and not t.is_alive():
            raise RuntimeError("the engine thread has stopped")

    def __del__(self):
        try:
            self.state.shutdown(timeout=1.0)
        except Exception:
            pass

    # -- Prometheus via Ray's metrics export ------------------------------------------------------------------
    def _start_metrics(self):
        if self._metrics_task is None:
            self._metrics_task = asyncio.get_running_loop().create_task(self._metrics_loop())

    async def _metrics_loop(self):
        while True:
            self._record_metrics()
            await asyncio.sleep(METRICS_PERIOD_S)

    def _record_metrics(self):
        try:
            from ray.serve import metrics as M

            if self._metrics is None:
                self._metrics = {
                    "gauges": {g: M.Gauge(f"llamacpp_{g}", description=f"llamacpy engine: {g}") for g in GAUGES},
                    "counters": {c: M.Counter(f"llamacpp_{c}_total", description=f"llamacpy engine: {c}")
                                 for c, _ in COUNTERS},
                }
            m = self.state.engine.metrics()
            for g, metric in self._metrics["gauges"].items():
                metric.set(float(m.get(g, 0) or 0))
            for c, src in COUNTERS:
                v = float(m.get(src, 0) or 0)
                delta = v - self._seen.get(c, 0.0)
                if delta > 0:
                    self._metrics["counters"][c].inc(delta)
                    self._seen[c] = v
        except Exception:  # metrics must never break generation
            pass
