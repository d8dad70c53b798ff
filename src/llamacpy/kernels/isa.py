"""CPU-feature detection: the SIMD level the explicit kernels use, chosen once per process.

Owns: `level()` -> one of LEVELS ("avx512vnni", "avxvnni", "avx2", "neon", "generic"), `available()` (the levels
this CPU can run), `describe()` (one line for `info` / `bench`). The environment variable
LLAMACPY_ISA=<level> forces a level; one this CPU cannot run is refused with IsaError naming the variable.
Features come from LLVM (llvmlite.binding.get_host_cpu_features), i.e. what numba compiles for.

Levels (what the level's kernels emit):
    avx512vnni  512-bit vpdpbusd (needs avx512f, avx512bw, avx512vnni)
    avxvnni     256-bit vpdpbusd: the VEX form (avxvnni, e.g. Alder Lake) or the same instruction EVEX-encoded
                (avx512vnni + avx512vl) -- LLVM picks the encoding the CPU has
    avx2        256-bit pmaddubsw + pmaddwd (needs avx2, fma, f16c)
    neon        128-bit sdot (aarch64 with +dotprod). No ARM machine has run the suite yet; every NEON kernel is
                cross-compiled for AArch64 (tests/test_neon_codegen.py) and run on an emulated AArch64 CPU
                against the reference (tests/test_neon_emulated.py) on any CPU. Speed on ARM hardware: unmeasured
    generic     the auto-vectorised numba kernels (the reference and fallback on every CPU)
Must not: hold kernels; import numba's compiled code (only llvmlite's host queries).
"""

from __future__ import annotations

import os
import platform

from ..errors import LlamacpyError

LEVELS = ("avx512vnni", "avxvnni", "avx2", "neon", "generic")
ENV = "LLAMACPY_ISA"

_NEEDS = {
    "avx512vnni": ({"avx512f", "avx512bw", "avx512vnni", "f16c", "fma"},),
    "avxvnni": ({"avx2", "avxvnni", "f16c", "fma"}, {"avx2", "avx512vl", "avx512vnni", "f16c", "fma"}),
    "avx2": ({"avx2", "f16c", "fma"},),
    "neon": ({"neon", "dotprod"},),
    "generic": (set(),),
}


class IsaError(LlamacpyError):
    """LLAMACPY_ISA names an unknown level or one this CPU lacks."""


def host_features() -> set[str]:
    """Features LLVM reports for this CPU (the names LLVM uses: 'avx512vnni', 'avxvnni', 'dotprod', ...)."""
    import llvmlite.binding as llvm

    try:
        feats = llvm.get_host_cpu_features()
        on = {k for k, v in feats.items() if v}
    except RuntimeError:  # llvmlite raises when the host's features cannot be read
        on = set()
    if platform.machine().lower() in ("arm64", "aarch64"):
        on.add("neon")  # Advanced SIMD is mandatory on AArch64; LLVM does not always list it
    return on


def host_cpu_name() -> str:
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name()


def available(features: set[str] | None = None) -> list[str]:
    """The levels this CPU runs, best first (generic always)."""
    f = host_features() if features is None else features
    return [lv for lv in LEVELS if any(need <= f for need in _NEEDS[lv])]


def detect(features: set[str] | None = None) -> str:
    """The default level: the best available."""
    return available(features)[0]


_level: str | None = None


def choose(env: str | None = None, features: set[str] | None = None) -> str:
    """The level for LLAMACPY_ISA=env (None/empty: detected); raises IsaError for an unknown or absent level."""
    if not env:
        return detect(features)
    want = env.strip().lower()
    if want not in LEVELS:
        raise IsaError(f"{ENV}={env!r}: unknown level; choose one of {', '.join(LEVELS)}")
    have = available(features)
    if want not in have:
        raise IsaError(f"{ENV}={want}: this CPU ({host_cpu_name()}) lacks it; it can run {', '.join(have)}")
    return want


def level() -> str:
    """The level of this process (LLAMACPY_ISA or detected), fixed at the first call."""
    global _level
    if _level is None:
        _level = choose(os.environ.get(ENV))
    return _level


def describe() -> str:
    lv = level()
    forced = f" (forced by {ENV})" if os.environ.get(ENV) else ""
    return f"{lv}{forced}; CPU {host_cpu_name()}, available: {', '.join(available())}"
