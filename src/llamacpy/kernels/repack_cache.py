"""Repacked weights cached on disk: written once, then memory-mapped (shared through the page cache).

Owns: `load_or_build(raws, layout, build)` -> the packed arrays for weight data `raws` (views of a GGUF file's
mmap), from a cache entry when a valid one exists, else `build()` -- written atomically to the cache and then
served from the new entry's mapping. `cache_dir()`, `enabled()`, `set_enabled()`, `describe()`.

Where: $LLAMACPY_REPACK_CACHE, else $XDG_CACHE_HOME/llamacpy/repack, else ~/.cache/llamacpy/repack; one folder
per model path (<hash>-<file name>), one entry per tensor (or fused set of tensors) and layout. Off with
LLAMACPY_NO_REPACK_CACHE=1 or `set_enabled(False)` (the CLI's --no-repack-cache). Entries are mapped with
MADV_HUGEPAGE (`advise_hugepages`; LLAMACPY_NO_HUGEPAGES=1 turns it off): 2 MiB page-cache folios, PMD-mapped.
Entry name: hash of (model path, tensor byte ranges, layout string incl. its version, rows per group and ISA
level). The header repeats that key and adds the source file's identity (size, mtime_ns, inode, crc32 of its
first and last 64 KiB): an entry whose identity no longer matches (the file changed), whose length differs
from its header's (truncated), or whose header or sampled checksum is wrong (corrupt) is never used -- it is
rebuilt and replaced. The checksum is cheap on purpose (warm start must not read every byte): crc32 of the
first and last 4 KiB of every array and of 4 KiB every 4 MiB. Entries are written to a temporary file in the
same folder and renamed into place (os.replace), so readers never see a partial entry and two processes
writing the same entry both end with a valid one. A folder that cannot be written (read-only, full, absent
permissions) degrades to the in-memory repack of before, with one line on stderr. No eviction: delete the
folder to reclaim space (`llamacpy info` prints where it is).
Finding the file: the raw arrays are numpy views of an mmap; their file and offset come from /proc/self/maps
(Linux). Where that is not available the cache is skipped (in-memory repack).
Must not: know block formats (the caller's build() does) or choose kernels.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import sys
import weakref
import zlib
from pathlib import Path

import numpy as np

from ..mmap_advice import advise_hugepages

MAGIC = b"LCPYRPK1"
FORMAT = 1
ALIGN = 64
WRITE_PIECE = 2 << 20  # bytes per write() of a new entry, at offsets that are multiples of it (huge folios)
_SAMPLE, _STRIDE = 4096, 4 << 20
ENV_DIR, ENV_OFF = "LLAMACPY_REPACK_CACHE", "LLAMACPY_NO_REPACK_CACHE"

_enabled: bool | None = None
_warned = False
stats = {"hits": 0, "writes": 0, "rebuilt": 0, "skipped": 0}  # for tests and `bench`


def enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get(ENV_OFF, "").strip().lower() in ("", "0", "no", "false")


def set_enabled(on: bool | None) -> None:
    """True/False overrides the environment for this process; None goes back to it."""
    global _enabled
    _enabled = on


def cache_dir() -> Path:
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llamacpy" / "repack"


def describe() -> str:
    if not enabled():
        return f"off ({ENV_OFF} or --no-repack-cache)"
    return str(cache_dir())


# -- where a raw array lives -----------------------------------------------------------------------------------
def _buffer_root(a: np.ndarray):
    """The object at the bottom of `a`'s buffer chain, through numpy bases and memoryview slices: an mmap.mmap,
    a bytes object, or the array that owns its memory."""
    b = a
    while True:
        if isinstance(b, memoryview):
            b = b.obj
        elif isinstance(b, np.ndarray) and b.base is not None:
            b = b.base
        else:
            return b


def _mmap_of(a: np.ndarray):
    """The mmap.mmap object `a` views (through numpy bases / memoryviews), or None."""
    b = _buffer_root(a)
    return b if isinstance(b, mmap.mmap) else None


def _maps_entry(addr: int):
    """(path, file offset of addr) from /proc/self/maps, or None."""
    try:
        with open("/proc/self/maps") as f:
            for ln in f:
                parts = ln.split(None, 5)
                if len(parts) < 6:
                    continue
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                if lo <= addr < hi:
                    path = parts[5].strip()
                    if not path.startswith("/") or path.endswith("(deleted)"):
                        return None
                    return path, int(parts[2], 16) + (addr - lo)
    except (OSError, ValueError):
        return None
    return None


_mm_info: dict[int, tuple] = {}  # id(mmap) -> (weakref to the mmap, path, start address, file offset of start)


def locate(a: np.ndarray):
    """(file path, byte offset in the file, nbytes) of a C-contiguous view of a file mapping, else None."""
    mm = _mmap_of(a)
    if mm is None or not a.flags.c_contiguous:
        return None
    info = _mm_info.get(id(mm))
    if info is None or info[0]() is not mm:
        try:
            start = np.frombuffer(mm, np.uint8, count=1).ctypes.data
        except (ValueError, TypeError):
            return None
        ent = _maps_entry(start)
        if ent is None:
            return None
        info = (weakref.ref(mm), ent[0], start, ent[1])  # weak: the model's mapping may close
        _mm_info[id(mm)] = info
    _, path, start, off0 = info
    return path, off0 + (a.ctypes.data - start), int(a.nbytes)


_ident_memo: dict[tuple, dict] = {}


def file_identity(path: str) -> dict:
    st = os.stat(path)
    k = (path, st.st_size, st.st_mtime_ns, st.st_ino)
    ident = _ident_memo.get(k)
    if ident is None:
        with open(path, "rb") as f:
            head = f.read(65536)
            f.seek(max(0, st.st_size - 65536))
            tail = f.read(65536)
        ident = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino,
                 "crc_head": zlib.crc32(head), "crc_tail": zlib.crc32(tail)}
        _ident_memo[k] = ident
    return ident


# -- entries ---------------------------------------------------------------------------------------------------
def _sampled_crc(buf, offset: int, nbytes: int) -> int:
    c = 0
    end = offset + nbytes
    pos = offset
    while pos < end:
        c = zlib.crc32(buf[pos:min(pos + _SAMPLE, end)], c)
        pos += _STRIDE
    if nbytes > _SAMPLE:
        c = zlib.crc32(buf[end - _SAMPLE:end], c)
    return c


def entry_path(path: str, key: dict) -> Path:
    real = os.path.realpath(path)
    folder = hashlib.sha256(real.encode()).hexdigest()[:16] + "-" + os.path.basename(real)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32] + ".rpk"
    return cache_dir() / folder / name


def _read(p: Path, key: dict, ident: dict):
    """The arrays of a valid entry (views of its private mapping), or None (absent / invalid). The header is read
    through the mapping, after advise_hugepages: a read() of it first would put the entry's first pages in the
    page cache as small folios (normal readahead), and its first 2 MiB could then not be mapped by PMD."""
    try:
        f = open(p, "rb")
    except OSError:
        return None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < 16:
            return False
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: same types as in-memory arrays
        except (OSError, ValueError):
            return False
    advise_hugepages(mm)
    if mm[:8] != MAGIC:
        return False
    hlen = int.from_bytes(mm[8:16], "little")
    if hlen <= 0 or 16 + hlen > size:
        return False
    try:
        head = json.loads(mm[16:16 + hlen].decode())
    except (UnicodeDecodeError, ValueError):
        return False
    if not isinstance(head, dict) or head.get("format") != FORMAT or head.get("key") != key:
        return False
    if head.get("source") != ident or head.get("size") != size:
        return False
    try:
        out = []
        for a in head["arrays"]:
            dt, shape, off, n = np.dtype(a["dtype"]), tuple(a["shape"]), int(a["offset"]), int(a["nbytes"])
            if off + n > size or int(np.prod(shape, dtype=np.int64)) * dt.itemsize != n:
                return False
            if _sampled_crc(mm, off, n) != a["crc"]:
                return False
            out.append(np.frombuffer(mm, dt, count=n // dt.itemsize, offset=off).reshape(shape))
    except (KeyError, TypeError, ValueError):
        return False
    return tuple(out)


def _write(p: Path, key: dict, ident: dict, arrays: tuple) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    metas, off = [], 0
    for a in arrays:
        metas.append({"dtype": a.dtype.str, "shape": list(a.shape), "nbytes": int(a.nbytes)})
    # header length is fixed before offsets are known: reserve room, offsets are computed from that bound
    draft = json.dumps({"format": FORMAT, "key": key, "source": ident, "size": 0,
                        "arrays": [dict(m, offset=0, crc=0) for m in metas]}).encode()
    hlen = len(draft) + 64 + 40 * len(metas)
    off = -(-(16 + hlen) // ALIGN) * ALIGN
    for m in metas:
        m["offset"] = off
        off = -(-(off + m["nbytes"]) // ALIGN) * ALIGN
    total = off
    for m, a in zip(metas, arrays):
        m["crc"] = _sampled_crc(memoryview(np.ascontiguousarray(a)).cast("B"), 0, m["nbytes"])
    head = json.dumps({"format": FORMAT, "key": key, "source": ident, "size": total, "arrays": metas}).encode()
    head = head.ljust(hlen)
    assert len(head) == hlen
    # written in 2 MiB pieces at 2 MiB-aligned offsets, each assembled from the header and the arrays it overlaps:
    # each piece is one write() of a whole aligned range, so the page cache takes it as one 2 MiB folio
    # (PMD-mappable: see advise_hugepages) -- writing the header and each array apart left the ranges they share in
    # small folios (7B Q4_0 entries just written: 3.06 of 3.68 GB PMD-mapped, 3.47 of 3.58 once re-read after an
    # eviction)
    segs = [(0, np.frombuffer(MAGIC + hlen.to_bytes(8, "little") + head, np.uint8))]
    segs += [(m["offset"], np.ascontiguousarray(a).reshape(-1).view(np.uint8)) for m, a in zip(metas, arrays)]
    buf = np.empty(min(WRITE_PIECE, total), np.uint8)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb", buffering=0) as f:
            for o in range(0, total, WRITE_PIECE):
                piece = buf[:min(WRITE_PIECE, total - o)]
                piece[:] = 0  # alignment gaps
                for s0, data in segs:
                    lo, hi = max(o, s0), min(o + len(piece), s0 + len(data))
                    if lo < hi:
                        piece[lo - o:hi - o] = data[lo - s0:hi - s0]
                mv = memoryview(piece)
                while len(mv):
                    mv = mv[f.write(mv):]
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _warn(msg: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        print(f"llamacpy: {msg}; repacking in memory", file=sys.stderr)


def load_or_build(raws: list, layout: str, build):
    """Packed arrays for weights `raws` (file-mapped numpy views) in `layout` (a string naming the layout,
    its version, rows per group and ISA level); `build()` makes them when no valid entry exists."""
    if not enabled():
        stats["skipped"] += 1
        return build()
    locs = [locate(r) for r in raws]
    if any(l is None for l in locs) or len({l[0] for l in locs}) != 1:
        stats["skipped"] += 1
        return build()
    path = locs[0][0]
    try:
        ident = file_identity(path)
    except OSError:
        stats["skipped"] += 1
        return build()
    key = {"layout": layout, "ranges": [[l[1], l[2]] for l in locs], "path": os.path.realpath(path)}
    p = entry_path(path, key)
    got = _read(p, key, ident)
    if got:
        stats["hits"] += 1
        return got
    if got is False:
        stats["rebuilt"] += 1
    arrays = build()
    try:
        _write(p, key, ident, arrays)
    except OSError as e:
        _warn(f"cannot write the repack cache {cache_dir()} ({e.strerror or e})")
        return arrays
    got = _read(p, key, ident)
    if not got:  # replaced meanwhile by another process's equal entry that we cannot read: keep ours
        return arrays
    stats["writes"] += 1
    return got
