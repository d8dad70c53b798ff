"""The engine as the ingress sees it: the server's `Engine` interface, answered by the model replicas over Ray.

Owns: `RemoteEngine` (submit / embed / slots / metrics / shutdown, as llamacpy.engine.Engine, so the server's
routes run unchanged on top of it) and `RemoteRequest` (iterating a request's TokenEvents from a
`LlamaReplica.generate` stream, cancelling it, retrying it on another replica when its replica died before
anything reached the client, else ending it with an "error" final event). It validates what Engine.submit
validates first, so bad input is answered without a round trip, and passes `route_key` (routing.prefix_key)
for the prefix-affinity router. Per-replica snapshots (slots, counters) are kept from every stream's end and
every /slots or /metrics call; /metrics sums them.
Must not: generate (replicas do), shape responses, or be iterated on the asyncio loop (it blocks: with
`on_event`, as the server submits, a pump thread per request iterates it).
"""

from __future__ import annotations

import threading
import time
import weakref

import numpy as np

from .routing import prefix_key

RETRIES = 2  # extra replicas tried for a request whose replica died before it delivered anything
CALL_TIMEOUT_S = 30.0  # snapshot / info calls


def _replica_lost_errors() -> tuple:
    import ray.exceptions as E

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
             "ObjectLostError", "OwnerDiedError")
    return tuple(getattr(E, n) for n in names if hasattr(E, n))


def _is_backpressure(e: BaseException) -> bool:
    return type(e).__name__ == "BackPressureError"


def _is_cancelled(e: BaseException) -> bool:
    return type(e).__name__ in ("RequestCancelledError", "TaskCancelledError", "CancelledError")


class RemoteEngine:
    def __init__(self, handle, n_vocab: int, n_slots: int, n_ctx_slot: int, retries: int = RETRIES):
        self.handle = handle  # DeploymentHandle of LlamaReplica
        self.n_vocab = n_vocab
        self.n_slots = n_slots
        self.n_ctx_slot = n_ctx_slot
        self.retries = retries
        self.replicas: dict[str, dict] = {}  # replica id -> latest snapshot (+ "served": requests finished there)
        self._lock = threading.Lock()
        self._live: weakref.WeakSet = weakref.WeakSet()
        self._stop = False

    # -- the Engine interface ---------------------------------------------------------------------------------
    def submit(self, req, on_event=None):
        from ..engine import QueueFull, check_request

        check_request(req, self.n_vocab, self.n_slots, self.n_ctx_slot)
        if self._stop:
            raise QueueFull("the server is shutting down")
        h = RemoteRequest(self, req)
        self._live.add(h)
        if on_event is not None:  # as Engine.submit: events go only to on_event (here from a pump thread)
            threading.Thread(target=h.pump, args=(on_event,), name="llamacpy-ray-pump", daemon=True).start()
        return h

    def embed(self, tokens) -> np.ndarray:
        from ..engine import InvalidRequest, QueueFull

        toks = [int(t) for t in tokens]
        if not toks:
            raise InvalidRequest("the input is empty")
        last = None
        for _ in range(self.retries + 1):
            try:
                return np.asarray(self.handle.embed.remote(toks).result(), dtype=np.float32)  # (n_embd,)
            except _replica_lost_errors() as e:
                last = e
            except Exception as e:
                if _is_backpressure(e):
                    raise QueueFull("every replica's queue is full") from None
                raise
        raise RuntimeError(f"no replica could compute the embedding: {type(last).__name__}")

    def slots(self) -> list[dict]:
        self.refresh()
        with self._lock:
            snaps = sorted(self.replicas.items())
        return [dict(s, replica=rid, replica_served=snap.get("served", 0)) for rid, snap in snaps
                for s in snap.get("slots", [])]

    def metrics(self) -> dict:
        """Every replica's counters summed (Ray's metrics export has them per replica)."""
        self.refresh()
        out: dict = {}
        with self._lock:
            for snap in self.replicas.values():
                for k, v in (snap.get("metrics") or {}).items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        out[k] = out.get(k, 0) + v
            n = max(len(self.replicas), 1)
        if "kv_cache_usage_ratio" in out:
            out["kv_cache_usage_ratio"] /= n
        return out

    def replica_table(self) -> dict:
        with self._lock:
            return {rid: {"served": s.get("served", 0), "pid": s.get("pid"), "host": s.get("host")}
                    for rid, s in self.replicas.items()}

    def refresh(self) -> None:
        """Ask one replica (Ray picks it) for its current slots and counters."""
        try:
            self._store(self.handle.snapshot.remote().result(timeout_s=CALL_TIMEOUT_S))
        except Exception:
            pass  # a dying replica: the others' snapshots stand

    def shutdown(self, timeout: float = 1.0) -> None:
        self._stop = True
        for h in list(self._live):
            h.cancel()

    # -- bookkeeping ------------------------------------------------------------------------------------------
    def _store(self, snap: dict, served: int = 0) -> None:
        rid = snap.get("replica")
        if not rid:
            return
        with self._lock:
            cur = self.replicas.setdefault(rid, {"served": 0})
            cur.update({k: v for k, v in snap.items() if k != "served"})
            cur["served"] += served
            cur["t"] = time.time()

    def _forget(self, rid: str | None) -> None:
        if rid:
            with self._lock:
                self.replicas.pop(rid, None)


class RemoteRequest:
    """Iterate for TokenEvents (blocking); `cancel()` from any thread."""

    def __init__(self, engine: RemoteEngine, req):
        self.engine = engine
        self.request = req
        self.route_key = prefix_key(req.prompt_tokens)
        self.id_task = 0
        self.cancelled = False
        self.done = False
        self.replica: str | None = None
        self._gen = None
        self._lock = threading.Lock()
        self._decided = threading.Event()  # a replica accepted the request, or it was refused / failed first
        self.refusal: Exception | None = None  # the APIError (503 busy, 400 invalid) when refused

    def wait_admitted(self, timeout: float | None = None):
        """Block until a replica accepted or refused the request: the refusal (an APIError: 503 when every queue
        is full, 400 for a request the replica's engine rejects) or None. The server awaits this before it answers,
        so a refusal gets its own status, not a 500 or a 200 stream with an error in it."""
        self._decided.wait(timeout)
        return self.refusal

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            gen = self._gen
        if gen is not None and not self.done:
            try:
                gen.cancel()
            except Exception:
                pass

    def _final(self, reason: str, error: str | None = None):
        from ..engine import TokenEvent

        self.done = True
        return TokenEvent(token=None, text="", finish_reason=reason, error=error, timings={})

    def pump(self, on_event) -> None:
        """Deliver every event to on_event; a refusal or failure becomes the final "error" event."""
        it = iter(self)
        try:
            for ev in it:
                try:
                    on_event(ev)
                except Exception:  # the listener is gone (as Engine: its own request is cancelled, nothing else)
                    self.cancel()
                    it.close()
                    return
        except Exception as e:
            from ..server.errors import APIError

            if isinstance(e, APIError) and not self._decided.is_set():
                self.refusal = e  # refused before a replica took it: the server answers e's status
            self._decided.set()
            msg = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
            try:
                on_event(self._final("error", msg))
            except Exception:
                pass
        finally:
            self._decided.set()

    def __iter__(self):
        from ..engine import QueueFull
        from ..server.errors import invalid, unavailable

        lost = _replica_lost_errors()
        eng = self.engine
        for attempt in range(eng.retries + 1):
            if self.cancelled:
                yield self._final("cancelled")
                return
            gen = eng.handle.options(stream=True).generate.remote(self.request, route_key=self.route_key)
            with self._lock:
                self._gen = gen
                cancelled = self.cancelled
            if cancelled:
                gen.cancel()
            delivered, rid = False, None
            try:
                for item in gen:
                    if isinstance(item, dict):
                        if "refused" in item:
                            if item["refused"] == "busy":
                                raise unavailable(f"server busy: request queue is full ({item['message']})")
                            raise invalid(item["message"])
                        rid = self.replica = item["accepted"]["replica"]
                        eng._store(item["accepted"])
                        self._decided.set()
                        continue
                    for ev in item:
                        delivered = True
                        if ev.finish_reason is not None:
                            self.done = True
                            eng._store({"replica": rid}, served=1)
                        yield ev
                        if self.done:
                            return
                raise RuntimeError("the replica's stream ended without a final event")
            except lost as e:
                eng._forget(rid)
                if delivered or self.cancelled or attempt == eng.retries:
                    yield self._final("error", f"replica {rid or '?'} was lost mid-request ({type(e).__name__})")
                    return
                continue  # nothing reached the client: try another replica
            except Exception as e:
                if _is_cancelled(e) or self.cancelled:
                    yield self._final("cancelled")
                    return
                if _is_backpressure(e):
                    raise unavailable("server busy: every replica's queue is full") from None
                if isinstance(e, QueueFull):
                    raise unavailable(str(e)) from None
                raise
