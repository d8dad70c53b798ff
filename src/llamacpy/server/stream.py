"""The bridge from the engine thread to asyncio, and Server-Sent Events.

Owns: `EventBridge` -- the engine's per-request event callback scheduling each `TokenEvent` onto the event
loop with `loop.call_soon_threadsafe` (no thread per request; the loop never blocks on the engine); cancelling
the request when its client goes away (a watcher on the ASGI `receive` channel) or when it waits too long; and
`sse()`, one `data: {json}\\n\\n` event.
Must not: build response bodies (responses.py) or enter numba (only the engine thread does).
"""

from __future__ import annotations

import asyncio
import json


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
    engine thread: it only schedules the event onto the loop. `cancel()` is safe any number of times."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float):
        self.loop = loop
        self.timeout = timeout
        self.queue: asyncio.Queue = asyncio.Queue()
        self.handle = None
        self.finished = False
        self._cancelled = False

    def on_event(self, ev) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)
        except RuntimeError:  # the loop is closed (server exiting): nobody listens any more
            self.cancel()

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
        # not asyncio.wait_for: on Python < 3.12 it can swallow a cancellation that races a completed get()
        get = asyncio.ensure_future(self.queue.get())
        try:
            done, _ = await asyncio.wait({get}, timeout=self.timeout)
        except BaseException:
            get.cancel()
            raise
        if not done:
            get.cancel()
            self.cancel()
            raise RequestTimeout(f"no token for {self.timeout:g} s (-to/--timeout); request cancelled")
        ev = get.result()
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
