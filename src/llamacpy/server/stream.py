"""The bridge from the engine thread to asyncio, and Server-Sent Events.

Owns: `EventBridge` -- the engine's per-request event callback buffering each `TokenEvent` and waking the event
loop with `loop.call_soon_threadsafe` (no thread per request; the loop never blocks on the engine; one wake-up per
burst of events, or only at the end of a non-streamed request); cancelling
the request when its client goes away (a watcher on the ASGI `receive` channel) or when it waits too long; and
`sse()`, one `data: {json}\\n\\n` event.
Must not: build response bodies (responses.py) or enter numba (only the engine thread does).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time


def sse(data, event: str = "data") -> bytes:
    """One SSE event (RFC 8895: terminated by a blank line). `data` is JSON-encoded unless it is a str."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{event}: {payload}\n\n".encode("utf-8")


class RequestTimeout(Exception):
    pass


class Disconnected(Exception):
    pass


class EventBridge:
    """Async iteration over one engine request's events. `on_event` is handed to `Engine.submit` and runs on the
    engine thread: it appends the event to a buffer and wakes the loop only when no wake-up is pending (a loop
    that is behind drains several events per wake-up); with `final_only` (a non-streamed request: nobody reads
    the tokens before the end) only the final event wakes it. `cancel()` is safe any number of times."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, final_only: bool = False):
        self.loop = loop
        self.timeout = timeout
        self.final_only = final_only
        self._buf: collections.deque = collections.deque()  # appended on the engine thread, popped on the loop
        self._ready = asyncio.Event()
        self._wake_pending = False
        self._t_last = time.monotonic()  # the last event (or the start): the -to/--timeout clock
        self.handle = None
        self.finished = False
        self._cancelled = False

    def on_event(self, ev) -> None:
        self._buf.append(ev)
        self._t_last = time.monotonic()
        if (self.final_only and ev.finish_reason is None) or self._wake_pending:
            return
        self._wake_pending = True
        try:
            self.loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed (server exiting): nobody listens any more
            self.cancel()

    def _wake(self) -> None:
        self._wake_pending = False  # events appended from here on schedule another wake-up
        self._ready.set()

    def cancel(self) -> None:
        if not self._cancelled and not self.finished and self.handle is not None:
            self._cancelled = True
            try:
                self.handle.cancel()
            except Exception:
                pass

    async def next(self):
        """The next TokenEvent, or None after the final one. Raises RequestTimeout after `timeout` s of silence."""
        if self.finished:
            return None
        while not self._buf:
            self._ready.clear()
            if self._buf:
                break
            left = self.timeout - (time.monotonic() - self._t_last)
            if left <= 0:
                self.cancel()
                raise RequestTimeout(f"no token for {self.timeout:g} s (-to/--timeout); request cancelled")
            # not asyncio.wait_for: on Python < 3.12 it can swallow a cancellation that races a completed wait
            w = asyncio.ensure_future(self._ready.wait())
            try:
                await asyncio.wait({w}, timeout=left)
            except BaseException:
                w.cancel()
                raise
            w.cancel()
        ev = self._buf.popleft()
        if ev.finish_reason is not None:
            self.finished = True
        return ev

    async def events(self):
        while True:
            ev = await self.next()
            if ev is None:
                return
            yield ev
            if self.finished:
                return


async def watch_disconnect(receive) -> None:
    """Returns when the client has gone away (the body must already have been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_done_or_disconnect(coro, receive, on_disconnect):
    """Run `coro`; if the client disconnects first, call on_disconnect() at once (cancelling the engine
    requests, so nothing keeps generating for nobody), cancel `coro` and raise Disconnected."""
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(watch_disconnect(receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        on_disconnect()
        task.cancel()
        try:
            await task
        except BaseException:
            pass
        raise Disconnected()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
