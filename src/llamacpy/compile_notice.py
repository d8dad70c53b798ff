"""One stderr line when numba actually compiles a llamacpy kernel (a cold cache), so a first run is not silent.

Owns: listening to numba's "numba:compile" event (emitted only on a cache miss, never when a kernel is loaded
from the on-disk cache) and printing, once per process, which kernel started compiling and where the cache
lives. Numba's cache index key holds the LLVM target triple, the host CPU name and its feature string
(numba/core/caching.py `_index_key` -> codegen `magic_tuple()`), so kernels compiled on one CPU are never
loaded on another, even from a shared disk: the other CPU misses, compiles, and this line appears there too.
Must not: compile or warm up anything itself.
"""

from __future__ import annotations

import os
import sys

_installed = False


def _cache_dir() -> str:
    from numba.core import config

    if config.CACHE_DIR:
        return config.CACHE_DIR
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "__pycache__")


def install(stream=None) -> None:
    """Register the listener (idempotent). The line is printed at the first compilation only."""
    global _installed
    if _installed:
        return
    _installed = True
    from numba.core import event

    class _Notice(event.Listener):
        printed = False

        def on_start(self, ev):
            if self.printed:
                return
            disp = (ev.data or {}).get("dispatcher")
            func = getattr(disp, "py_func", None)
            if func is None or not getattr(func, "__module__", "").startswith("llamacpy."):
                return
            self.printed = True
            out = stream if stream is not None else sys.stderr
            # on a terminal the prompt may already be echoed on the current line: start the notice on its own
            lead = ""
            try:
                sys.stdout.flush()
                lead = "\n" if sys.stdout.isatty() and out.isatty() else ""
            except (AttributeError, ValueError, OSError):
                pass
            print(f"{lead}llamacpy: compiling kernels for this CPU, once: {func.__name__} and what this model needs "
                  f"(a few seconds; later runs load them from {_cache_dir()})", file=out, flush=True)

        def on_end(self, ev):
            pass

    event.register("numba:compile", _Notice())
