"""How many threads to use by default: the number of physical cores, as llama.cpp's cpu_get_num_physical_cores.

Owns: finding physical cores on Linux (sysfs thread_siblings sets, which aarch64 has too; /proc/cpuinfo as a
second source), macOS (sysctl hw.perflevel0.physicalcpu / hw.physicalcpu) and Windows
(GetLogicalProcessorInformationEx), capped by the CPUs this process may run on; and llama.cpp's fallback
elsewhere (n logical CPUs if n <= 4, else n / 2).
Must not: set thread counts (kernels.set_num_threads does), import numba.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def physical_cores() -> int:
    """The default thread count: physical cores this process can use, at least 1."""
    n = _detect()
    return max(1, min(n, _usable_logical())) if n else _fallback(_usable_logical())


def _usable_logical() -> int:
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return os.cpu_count() or 1


def _fallback(n_logical: int) -> int:
    """llama.cpp's guess when the topology is unknown: hyper-threading assumed above 4 CPUs."""
    return n_logical if n_logical <= 4 else n_logical // 2


def _detect() -> int:
    try:
        if sys.platform.startswith("linux"):
            return linux_cores() or cpuinfo_cores()
        if sys.platform == "darwin":
            return macos_cores()
        if sys.platform == "win32":
            return windows_cores()
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return 0


def linux_cores(cpu_root: str | os.PathLike = "/sys/devices/system/cpu") -> int:
    """Distinct thread-sibling sets = physical cores (each core lists its hardware threads)."""
    sets = set()
    for path in Path(cpu_root).glob("cpu[0-9]*/topology/thread_siblings"):
        sets.add(path.read_text().strip())
    return len(sets)


def cpuinfo_cores(path: str | os.PathLike = "/proc/cpuinfo") -> int:
    """Distinct (physical id, core id) pairs of /proc/cpuinfo (x86 lists them; many ARM kernels do not)."""
    cores = set()
    phys = None
    with open(path) as f:
        for line in f:
            if line.startswith("physical id"):
                phys = line.split(":")[1].strip()
            elif line.startswith("core id"):
                cores.add((phys, line.split(":")[1].strip()))
    return len(cores)


def macos_cores(run=subprocess.run) -> int:
    for key in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):  # performance cores first, as llama.cpp
        out = run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip().isdigit() and int(out.stdout) > 0:
            return int(out.stdout)
    return 0


def windows_cores() -> int:
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    relation_processor_core = 0
    size = wintypes.DWORD(0)
    kernel32.GetLogicalProcessorInformationEx(relation_processor_core, None, ctypes.byref(size))
    buf = (ctypes.c_byte * size.value)()
    if not kernel32.GetLogicalProcessorInformationEx(relation_processor_core, buf, ctypes.byref(size)):
        return 0
    count, offset = 0, 0
    while offset < size.value:  # records: DWORD Relationship, DWORD Size, ...
        record_size = int.from_bytes(bytes(buf[offset + 4:offset + 8]), "little")
        if record_size <= 0:
            break
        count += 1
        offset += record_size
    return count
