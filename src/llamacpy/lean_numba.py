"""Numba's one-time set-up done lean, for the command-line tools: its target registries loaded with the two
optional integrations that no llamacpy kernel uses (cffi, scipy's BLAS) left out.

Owns: `prepare()`. At the first kernel call of a process -- even one whose code comes from the on-disk cache --
numba imports all of its lowering and typing registries (numba/core/cpu.py `load_additional_registries`). Two
of them import optional packages when they are installed: numba.np.arraymath imports scipy.linalg to see
whether np.dot can call BLAS (scipy 1.17's package init imports its array_api_compat layer, which imports
numpy.f2py and numpy.testing: ~0.25 s on an idle 2-vCPU VM), and numba.core.typing.cffi_utils imports cffi and
pycparser (~0.15 s). Our kernels call neither np.dot/np.linalg nor cffi functions, so `prepare()` loads the
registries once while `scipy.linalg` and `cffi` read as absent, then puts sys.modules back: a later import of
either works as usual; only numba's own np.dot-in-jit and cffi-in-jit support stay off in the process.
It also marks numba's third-party extension hook (`numba_extensions` entry points) as done: finding them scans
the metadata of every installed distribution (~30 ms of CPU with 169 of them here), and no extension's types
appear in our kernels.
Must not: run from `import llamacpy` or the Python API (a user's own numba code in that process may need
np.dot or cffi); it is for the CLI's processes, whose only jitted code is ours. Must not compile anything.
"""

from __future__ import annotations

import sys

_HIDDEN = ("scipy.linalg", "cffi")  # `import numba` itself imports the scipy package (a version check)
_done = False


def prepare() -> None:
    """Load numba's registries now, without scipy/cffi (idempotent; a package already imported stays)."""
    global _done
    if _done:
        return
    _done = True
    from numba.core import entrypoints
    from numba.core.registry import cpu_target

    if hasattr(entrypoints, "_already_initialized"):  # numba 0.5x-0.6x: init_all() returns at once when True
        entrypoints._already_initialized = True

    hidden = [name for name in _HIDDEN if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # `import name` raises ImportError, which numba takes as "not installed"
    try:
        cpu_target.typing_context.refresh()
        cpu_target.target_context.refresh()
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
