"""Advice to the kernel about file mappings of weights (no numba, no numpy: imported by gguf_file at start-up).

Owns: `advise_hugepages(mm)`. Must not: map or read files itself.
"""

from __future__ import annotations

import mmap
import os

ENV_NO_HUGE = "LLAMACPY_NO_HUGEPAGES"


def advise_hugepages(mm: mmap.mmap) -> bool:
    """madvise(MADV_HUGEPAGE) a file mapping before it is touched (LLAMACPY_NO_HUGEPAGES=1: not). Where the
    filesystem keeps large folios in the page cache (ext4 on Linux >= 6.16, xfs, tmpfs with huge=) and THP is
    "madvise" or "always", readahead then reads 2 MiB folios and the mapping maps them by PMD: still the shared
    page cache, with 512x fewer page-table entries / TLB misses for a streaming read. Pages already cached in
    small folios stay as they are (mapped with 4 KiB entries); pages we write (a new entry) are large folios.
    Measured on the 7B Q4_0 entries (3.8 GB, benchmarks/bench_pages.py): numba sum 10-11 -> 15-17 GB/s on one
    thread, 2-2.5 -> 14-19 GB/s on two (busy machine). Returns whether the advice was given."""
    if os.environ.get(ENV_NO_HUGE, "").strip().lower() not in ("", "0", "no", "false"):
        return False
    adv = getattr(mmap, "MADV_HUGEPAGE", None)
    if adv is None:
        return False
    try:
        mm.madvise(adv)
    except (OSError, ValueError):
        return False
    return True
