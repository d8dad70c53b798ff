"""Linear (weight matrix) objects: pick the kernel for a ggml type and the path for a batch size.

Owns: `make_linear(ggml_type, raw, shape, name)`, the Linear classes, `set_num_threads/get_num_threads`,
`release_thread_pool`.
    decode (n_tokens <= DECODE_MAX): activations quantized once per call as llama.cpp does (Q8_0/Q8_1 for the
        legacy types, Q8_K for k-quants; rounded to f16/bf16 for F16/BF16 weights), then one numba call over
        the whole matrix: the types in _SIMD on the explicit-SIMD kernels (legacy_simd.py / kquants_simd.py,
        the level of isa.level(); LLAMACPY_ISA=generic turns them off), the other quantized types on the
        generic auto-vectorised ones (legacy.py / kquants.py on a row-interleaved repack), dense_simd.mv_half
        for F16/BF16 (dense.mv_half at the generic level), dense.mv_f32 for F32 (per-token results
        independent of the batch);
        dequant.matvec_generic when a repack is declined. Calls of 1..DECODE_MAX tokens of the types in
        gemm_simd.SMALL take its small-tile GEMMs instead of the decode kernel (bit-exact with it, measured
        faster; gemmx.GEMMX quantizes inside the GEMM's own compiled call where it has the type); the other
        SIMD types quantize inside the decode kernel's own compiled call (MVX). Every SIMD
        kernel is called through its cached entry point (_run_kernel). Repacked arrays come through
        repack_cache (written to disk once, then memory-mapped).
    prompt (n_tokens > DECODE_MAX): for the explicit-SIMD types, the register-tiled int8 GEMMs of gemm_simd.py
        where the type has one (same repacked weights and activations; bit-exact with the decode kernel), else
        the decode kernels DECODE_MAX rows a call (Linear.prompt_by_decode: both faster at every batch size
        measured than the f32 path); F16/BF16 at the SIMD levels on gemm_half.py's register-tiled GEMM
        (the decode kernel's weights read in place, bit-exact with it); for the others, the same rounded
        activations in f32 times f32 weight tiles of ~TILE_BYTES dequantized in numba, multiplied by numpy's
        sgemm (measured faster than their generic integer kernels).
Memory: a repacked tensor no longer needs its mmap pages; they are dropped from the resident set with
mmap.madvise(MADV_DONTNEED) after the repack and again after each prompt-path use (the page cache keeps the file;
only the resident set of this process shrinks). Only pages of a read-only file mapping are ever advised.

Threads: numba picks its OpenMP layer here (libgomp); were it the workqueue layer, that must not be entered from
two Python threads at once -- so run the model from one thread (a server uses one worker thread for the model).
set_num_threads sets numba's and OpenBLAS's thread counts together.
Must not: know about layers or the model.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading

import numba as nb
import numpy as np

from ..errors import ModelError
from ..gguf_file import ggml_type_name
from . import (dense, dense_simd, dequant, gemm_half, gemm_simd, gemmx, isa, kquants, kquants_simd, legacy,
               legacy_simd, q8, repack_cache, simd)
from .common import (BF16, BLOCK, F16, F16_TABLE, F32, KQUANTS, LEGACY, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0,
                     Q5_1, Q5_K, Q6_K, Q8_0, bf16_round, f16_round)

# OpenMP idle threads: spin briefly, then sleep. Measured on tg64 of a 1.1B Q4_0 (2 threads, ~100 parallel calls
# per token): OMP_WAIT_POLICY=passive 32-35 t/s (every call waits for a futex wake-up), libgomp's default
# (300000 spins) 39-50, GOMP_SPINCOUNT=30000 46-47. A bounded spin bridges the gap between consecutive matmuls
# without the long busy-waits that stall a contended machine. Set before numba loads libgomp; the user's own
# OMP_WAIT_POLICY / GOMP_SPINCOUNT win.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "30000"

SUPPORTED = {F32, F16, BF16} | set(LEGACY) | set(KQUANTS)
DECODE_MAX = 8     # batches up to this many tokens take the integer matvec kernels (crossover measured 8-16)
TILE_BYTES = 8 << 20  # f32 bytes per dequantized weight tile in the prompt path (rows = TILE_BYTES / 4 n_in)
# R: rows per interleaved group (default 64), measured per type on 5632x2048 from DRAM, one thread:
# Q6_K 8.9 -> 13.3 GB/s going from 64 to 256 rows, Q2_K 5.6 -> 11.5, Q4_K 16.1 -> 17.0 at 128; Q4_0, Q8_0,
# Q5_K and Q3_K are best at 64
GROUP_ROWS = {Q6_K: 256, Q2_K: 256, Q4_K: 128}
# Larger groups where a matrix has enough of them: Q6_K measured (same run, one / two threads, from DRAM)
# 5632x2048: R 256 13.0 / 24.1 GB/s, 512 15.7 / 27.5, 1024 16.2 / 30.8; 32000x2048: 256 12.0 / 22.9,
# 512 14.8 / 29.1, 1024 17.0 / 32.3, 2048 16.0 / 31.8. Taken only while the matrix keeps at least
# max(8, 2 x threads) groups (prange balance) and pads at most 1/32 of its rows.
GROUP_ROWS_BIG = {Q6_K: (1024, 512)}


_SIMD = {t: legacy_simd for t in legacy_simd.TYPES} | {t: kquants_simd for t in kquants_simd.TYPES}
_SIMD |= {F16: dense_simd, BF16: dense_simd}  # LinearHalf's decode (no repack: read in place)


def uses_simd(ggml_type: int) -> bool:
    """Whether this process's decode kernel for the type is an explicit-SIMD one (legacy_simd / kquants_simd)."""
    return ggml_type in _SIMD and isa.level() != "generic"


def rows_per_group(ggml_type: int, sizes) -> int:
    """group_rows for the generic kernels' layout; 1 for the SIMD kernels' per-row layout."""
    return 1 if uses_simd(ggml_type) else group_rows(ggml_type, sizes)


def group_rows(ggml_type: int, sizes) -> int:
    """Rows per interleaved group (generic kernels) for a matrix (or fused matrices) of `sizes` rows (all but
    the last part must fill whole groups, see FusedLinear)."""
    n_out = sum(sizes)
    min_groups = max(8, 2 * nb.config.NUMBA_NUM_THREADS)
    for R in GROUP_ROWS_BIG.get(ggml_type, ()):
        G = -(-n_out // R)
        if G >= min_groups and G * R - n_out <= n_out // 32 and all(n % R == 0 for n in sizes[:-1]):
            return R
    return GROUP_ROWS.get(ggml_type, 64)

_MV = {Q4_0: legacy.mv_q4_0, Q4_1: legacy.mv_q4_1, Q5_0: legacy.mv_q5_0, Q5_1: legacy.mv_q5_1,
       Q8_0: legacy.mv_q8_0, Q2_K: kquants.mv_q2_k, Q3_K: kquants.mv_q3_k, Q4_K: kquants.mv_q4_k,
       Q5_K: kquants.mv_q5_k, Q6_K: kquants.mv_q6_k}


# -- threads -----------------------------------------------------------------------------------------------------
def _blas_set_threads():
    """openblas_set_num_threads of the BLAS numpy loaded (found through /proc/self/maps), or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln}
    except OSError:
        return None
    for p in sorted(paths):
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                return fn
    return None


_blas_threads_fn = None
_blas_threads = 0  # what OpenBLAS was last told
# GEMMs below this many flops run on one OpenBLAS thread: a multi-threaded small GEMM wakes OpenBLAS's workers,
# which then spin against numba's (measured: tiny-llama pp64 1800 t/s with 2 BLAS threads, 18400 with 1;
# stories260K 7450 vs 47400). Large GEMMs keep all threads (sgemm 512x2048x5632: ~220 GFLOP/s on 2).
BLAS_MT_FLOPS = 100e6


def _blas(n: int) -> None:
    global _blas_threads_fn, _blas_threads
    if _blas_threads_fn is None:
        _blas_threads_fn = _blas_set_threads() or False
    if _blas_threads_fn and n != _blas_threads:
        _blas_threads_fn(n)
        _blas_threads = n


def matmul_t(a: np.ndarray, w: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = a @ w.T through numpy's sgemm, on one BLAS thread when the product is small.
    a: (n, k); w: (m, k); out: (n, m)."""
    _blas(1 if 2.0 * a.shape[0] * a.shape[1] * w.shape[0] < BLAS_MT_FLOPS else nb.get_num_threads())
    return np.matmul(a, w.T, out=out)


def _openmp_pause():
    """omp_pause_resource_all of the OpenMP runtime numba loaded (found through /proc/self/maps), or None.
    Only the runtimes under their own names count: wheels bundle renamed copies (sentencepiece's
    libgomp-6a29c32d.so) whose pools are not numba's."""
    import re

    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if re.match(r"lib(gomp|omp|iomp5)\.so", os.path.basename(
                ln.split()[-1]))}
    except OSError:
        return None
    for p in sorted(paths):
        try:
            fn = getattr(ctypes.CDLL(p), "omp_pause_resource_all", None)
        except OSError:
            continue
        if fn is not None:
            fn.argtypes = [ctypes.c_int]
            return fn
    return None


OMP_PAUSE_HARD = 2  # omp_pause_resource_t omp_pause_hard (OpenMP 5.0)


def release_thread_pool() -> bool:
    """Free the calling thread's OpenMP worker pool (omp_pause_resource_all), so that another thread can be
    the process's only OpenMP master. Call it on a thread that is done with the kernels before handing them to
    another (the server's engine thread). Why: libgomp keeps one pool per master thread, and once it manages more
    threads than there are CPUs it cuts the workers' spin-wait from GOMP_SPINCOUNT to 100 spins, so every
    parallel call then wakes its workers from a futex -- measured on 2 vCPUs: 1.6 us per empty parallel call from
    the only master, 14-36 us from a second one; a 1.1B Q4_0 decode step 35 -> 45-55 ms. Returns whether a pool
    was freed (False where the runtime has no such call: a no-op)."""
    fn = _openmp_pause()
    return bool(fn is not None and fn(OMP_PAUSE_HARD) == 0)


def set_num_threads(n: int) -> None:
    """Threads for the numba kernels and numpy's BLAS (prompt path)."""
    n = max(1, min(int(n), nb.config.NUMBA_NUM_THREADS))
    nb.set_num_threads(n)
    _blas(n)


def get_num_threads() -> int:
    return nb.get_num_threads()


# -- mmap residency ----------------------------------------------------------------------------------------------
_PAGE = mmap.PAGESIZE
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)  # absent where the OS has no madvise (Windows)


_file_mapping = repack_cache._mmap_of  # the mmap.mmap object `a` views (through numpy bases / memoryviews), or None


def _is_file_mapping(a: np.ndarray) -> bool:
    return _file_mapping(a) is not None


def drop_pages(a: np.ndarray) -> None:
    """mmap.madvise(MADV_DONTNEED) the whole pages under `a`, if `a` views a read-only file mapping (else
    no-op). Portable: Python's own mmap.madvise, where the platform has it."""
    mm = _file_mapping(a)
    if mm is None or _DONTNEED is None or a.nbytes < 16 * _PAGE:
        return
    try:
        probe = np.frombuffer(mm, np.uint8, count=1)
        if probe.flags.writeable:
            return  # a writable (private or shared) mapping: its pages may hold changes -- never advised
        start = a.ctypes.data - probe.ctypes.data
        lo = -(-start // _PAGE) * _PAGE
        hi = (start + a.nbytes) // _PAGE * _PAGE
        if hi > lo:
            mm.madvise(_DONTNEED, lo, hi - lo)
    except (OSError, ValueError):
        pass


# -- activation quantization, shared by consecutive matmuls of the same input (q/k/v, gate/up) -------------------
_last = {False: (None, None), True: (None, None)}  # kquant? -> (copy of x, its quantization)


def _quantized(x: np.ndarray, kquant: bool):
    """Q8_K (kquant) or Q8_0/Q8_1 quantization of x, reused while x is bitwise the same as last time."""
    prev, res = _last[kquant]
    if prev is not None and prev.shape == x.shape and np.array_equal(prev, x):
        return res
    res = q8.quantize_q8_k(x) if kquant else q8.quantize_q8_0(x)
    _last[kquant] = (x.copy(), res)
    return res


# Inputs shared by several Linear calls: FusedLinear's parts that run one after the other (mixed types, F16)
# quantize their common input once. Only inside FusedLinear's loop, where x is not written meanwhile.
class _Shared(threading.local):
    x = None  # the input being shared by this thread's FusedLinear loop, or None
    act: dict = None  # ggml type -> the SIMD kernel's activation arrays of x


_shared = _Shared()


def _per_input(x: np.ndarray, key, fn, *args):
    """fn(*args), computed once per key while x is the input a FusedLinear's parts share (else every call)."""
    sh = _shared
    if x is not sh.x:
        return fn(*args)
    v = sh.act.get(key)
    if v is None:
        v = sh.act[key] = fn(*args)
    return v


def _simd_activations(x: np.ndarray, ggml_type: int):
    """The SIMD kernel's activation arrays for x: quantized and laid out in one compiled call
    (legacy_simd / kquants_simd `activations`, the same bits as prep(quantize(x)))."""
    return _per_input(x, ggml_type, _SIMD[ggml_type].activations, ggml_type, isa.level(), x)


# The compiled entry point of a decode kernel for one matrix, kept on the matrix's object: numba's dispatcher
# resolves every argument's type on each call, ~6 us a call here (most of it typing the ISA token, a Python
# typeof), ~100 calls a token. The entry point is looked up once (the dispatcher's own compiled overload for
# the argument types of the first call) and called while the same packed arrays are passed; the activations
# always come from the same compiled function (same types), and the output must be a C-contiguous float32
# matrix -- anything else goes through the dispatcher.
_F32 = np.dtype(np.float32)


def _plain_out(out: np.ndarray) -> bool:
    return out.dtype == _F32 and out.ndim == 2 and out.flags.c_contiguous and out.flags.writeable


def _entry_point(fn, args):
    try:
        return fn.overloads[tuple(fn.typeof_pyval(a) for a in args)].entry_point
    except (KeyError, AttributeError, TypeError, ValueError):
        return None


def _run_kernel(owner, weights: tuple, fn, act: tuple, out: np.ndarray, pre: tuple = ()) -> None:
    """fn(isa token, *pre, *weights, *act, out), through the entry point cached on owner (one per kernel and
    `pre`: the GEMM's tile) when it applies."""
    cache = getattr(owner, "_entries", None)
    key = (fn, pre)
    ent = cache.get(key) if cache is not None else None
    if ent is not None and ent[0] is weights and _plain_out(out):
        ent[1](ent[2], *pre, *weights, *act, out)
        return
    tok = simd.token(isa.level())
    args = (tok, *pre, *weights, *act, out)
    fn(*args)
    if owner is not None and _plain_out(out):
        ep = _entry_point(fn, args)
        if cache is None:
            cache = owner._entries = {}
        if ep is None:
            cache.pop(key, None)
        else:
            cache[key] = (weights, ep, tok)


SMALL_GEMM = True  # decode calls of 1..DECODE_MAX tokens through gemm_simd's small tiles where measured faster


def _decode_packed(ggml_type: int, packed: tuple, x: np.ndarray, out: np.ndarray, owner=None) -> None:
    """One decode kernel call over a repacked matrix (the layout layout_name() names). For 1..DECODE_MAX tokens of
    the explicit-SIMD types, the register-tiled GEMM with the call's tile (gemm_simd.SMALL) where it has one:
    the same arrays, every (row, token) bit for bit the decode kernel's result; measured faster (fewer
    instructions per token; rows read as several in-order streams). owner: the object that holds `packed`
    (keeps the kernels' entry points, see _run_kernel)."""
    if uses_simd(ggml_type):
        mod = _SIMD[ggml_type]
        lv = isa.level()
        tl = gemm_simd.small_tile(ggml_type, lv, x.shape[0]) if SMALL_GEMM else None
        if tl is not None:
            y = out if out.flags.c_contiguous else np.empty(out.shape, np.float32)  # C-ordered rows
            gx = gemmx.GEMMX.get(ggml_type)
            if gx is not None and x is not _shared.x:  # quantized inside the GEMM's own compiled call
                _run_kernel(owner, packed, gx, (x, *mod.mvx_args(ggml_type, lv)), y, (tl,))
            else:
                _run_kernel(owner, packed, gemm_simd.GEMM[ggml_type], _simd_activations(x, ggml_type), y, (tl,))
            if y is not out:
                out[...] = y
        elif x is _shared.x:  # parts of a FusedLinear sharing x: its activations once per type
            _run_kernel(owner, packed, mod.MV[ggml_type], _simd_activations(x, ggml_type), out)
        else:  # quantized in the kernel's own compiled call (MVX: no activation arrays through Python)
            _run_kernel(owner, packed, mod.MVX[ggml_type], (x, *mod.mvx_args(ggml_type, isa.level())), out)
    else:
        _MV[ggml_type](*packed, *_quantized(x, ggml_type in KQUANTS), out)


def _prompt_packed(ggml_type: int, packed: tuple, x: np.ndarray, out: np.ndarray) -> None:
    """A prompt (n_tokens > DECODE_MAX) over a repacked matrix: the type's register-tiled GEMM (gemm_simd.py)
    where one exists, else the decode kernel DECODE_MAX rows a call. Both give every (row, token) the decode
    kernel's result bit for bit."""
    gemm = gemm_simd.GEMM.get(ggml_type) if uses_simd(ggml_type) else None
    if gemm is None:
        for a in range(0, x.shape[0], DECODE_MAX):  # (<= DECODE_MAX, n_in) slices of the prompt
            _decode_packed(ggml_type, packed, x[a:a + DECODE_MAX], out[a:a + DECODE_MAX])
        return
    y = out if out.flags.c_contiguous else np.empty(out.shape, np.float32)  # the GEMM stores C-ordered rows
    lv = isa.level()
    gemm(simd.token(lv), gemm_simd.prompt_tile(ggml_type, lv), *packed, *_simd_activations(x, ggml_type), y)
    if y is not out:
        out[...] = y


def build_packed(ggml_type: int, raw: np.ndarray, n_out: int, n_in: int, R: int) -> tuple:
    """The repacked arrays of one matrix, in this process's layout for the type (see layout_name)."""
    if uses_simd(ggml_type):
        return _SIMD[ggml_type].repack_rows(ggml_type, raw, n_out, n_in, isa.level())
    mod = kquants if ggml_type in KQUANTS else legacy
    return mod.repack(ggml_type, raw, n_out, n_in, R)


def layout_name(ggml_type: int, R: int) -> str:
    """Names a repacked layout for the disk cache's key: family, version, type, rows per group, ISA level."""
    if uses_simd(ggml_type):
        return f"rows-v{_SIMD[ggml_type].LAYOUT_VERSION}-t{ggml_type}-{isa.level()}"
    return f"group-v1-t{ggml_type}-R{R}-{isa.level()}"


def _tile_rows(n_in: int, n_out: int) -> int:
    """Rows per prompt-path tile: ~TILE_BYTES of f32, a multiple of 64. Few big tiles measured faster than many
    128-row ones: every switch between numba's OpenMP threads (dequantize) and OpenBLAS's threads (sgemm) costs
    the other pool's spin-wait."""
    return min(n_out, max(64, TILE_BYTES // (4 * n_in) // 64 * 64))


# -- Linear objects ----------------------------------------------------------------------------------------------
class Linear:
    """A weight matrix (n_out, n_in) in its file type.  y = lin(x): (n_tokens, n_in) f32 -> (n_tokens, n_out)."""

    def __init__(self, ggml_type: int, raw: np.ndarray, shape: tuple[int, int], name: str = ""):
        self.ggml_type = ggml_type
        self.raw = raw
        self.n_out, self.n_in = int(shape[0]), int(shape[1])
        self.name = name
        self.nbytes = int(raw.nbytes)

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, {ggml_type_name(self.ggml_type)}, {self.n_out}x{self.n_in})"

    def _out(self, x: np.ndarray, out):
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"{self.name}: input shape {x.shape}, expected (n, {self.n_in})")
        if out is None:
            out = np.empty((x.shape[0], self.n_out), np.float32)
        return out

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self._out(x, out)
        if x.shape[0] <= DECODE_MAX:
            self._decode(x, out)
        elif self.prompt_by_decode:
            self._prompt_simd(x, out)
        else:
            self._prompt(x, out)
        return out

    # Whether prompts go through the decode kernel DECODE_MAX rows at a time (set by LinearQuant for the
    # explicit-SIMD types): it beats the f32-tile + sgemm path at every batch size measured (1.1B Q4_0, 2 threads,
    # avx512vnni: pp16 10.5 -> 70, pp64 22 -> 85, pp512 51 -> 61 t/s), each row is computed independently of the
    # batch, and it quantizes the activations as llama.cpp's prompt path does (Q8_0 / Q8_K).
    prompt_by_decode = False

    # prompt path shared by every non-F32 type: f32 tiles of the weights times rounded activations
    def _prompt(self, x, out):
        xr = self._round_activations(x)  # (n, n_in)
        n = x.shape[0]
        rows = _tile_rows(self.n_in, self.n_out)
        tile = np.empty((rows, self.n_in), np.float32)
        tmp = np.empty((n, rows), np.float32)
        for r0 in range(0, self.n_out, rows):
            m = min(rows, self.n_out - r0)
            self._tile(r0, tile[:m])
            matmul_t(xr, tile[:m], tmp[:, :m])
            out[:, r0:r0 + m] = tmp[:, :m]
        self._after_prompt()

    def _after_prompt(self):
        pass

    def get_rows(self, ids) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_out):
            raise IndexError(f"{self.name}: row id out of range [0, {self.n_out})")
        return self._rows(ids)


class LinearF32(Linear):
    def __init__(self, *a):
        super().__init__(*a)
        self.w = np.asarray(self.raw, dtype=np.float32).reshape(self.n_out, self.n_in)  # (n_out, n_in) view

    def __call__(self, x, out=None):
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self._out(x, out)
        if x.shape[0] <= DECODE_MAX and self.w.flags.c_contiguous:
            dense.mv_f32(self.w, x, out)  # per-token results independent of the batch (see mv_f32)
        else:
            matmul_t(x, self.w, out)
        return out

    def _rows(self, ids):
        return self.w[ids].astype(np.float32, copy=True)


class LinearHalf(Linear):
    """F16 / BF16 read in place from the mmap (no repack)."""

    def __init__(self, *a):
        super().__init__(*a)
        self.w16 = np.asarray(self.raw).view(np.uint16).reshape(self.n_out, self.n_in)  # (n_out, n_in)
        self.kind = dense.KIND_F16 if self.ggml_type == F16 else dense.KIND_BF16
        self._w_simd = None  # (the words as dense_simd.mv_half takes them,)
        # prompts on gemm_half.gemm_half (bit-exact with the decode kernel, so prompt rows are independent of
        # the batch: model.prompt_split_exact) at the levels it has. Measured against the f32-tile + sgemm path
        # (Linear._prompt) and the decode kernel 8 rows a call, F16, one thread, avx512vnni, GFLOP/s gemm / sgemm
        # / decode: 2048x2048 pp16 48 / 25 / 31, pp64 77 / 51 / 32, pp512 79 / 80 / 33; 256x2048 53 / 26 / 44,
        # 78 / 39 / 41, 83 / 50 / 41; 5632x2048 51 / 26 / 34, 81 / 57 / 32, 94 / 89 / 32; 2048x5632 53 / 27 /
        # 30, 80 / 54 / 29, 90 / 79 / 28 (two threads on the shared VM: the GEMM ahead everywhere, noisier)
        self.prompt_by_decode = (uses_simd(self.ggml_type) and isa.level() in gemm_half.LEVELS
                                 and self.w16.flags.c_contiguous)

    def _prompt_simd(self, x, out):
        """A prompt (n_tokens > DECODE_MAX) on the register-tiled GEMM, every (row, token) equal to mv_half's."""
        w = dense_simd.weights(self.w16, self.kind == dense.KIND_BF16)
        y = out if out.flags.c_contiguous else np.empty(out.shape, np.float32)  # the GEMM stores C-ordered rows
        xr = np.empty(x.shape, np.float32)  # (n, n_in): common.f16_round / bf16_round's bits, compiled
        gemm_half.round_activations(x, self.kind == dense.KIND_BF16, xr)
        gemm_half.gemm_half(simd.token(isa.level()), w, xr, y)
        if y is not out:
            out[...] = y

    def _round_activations(self, x):
        return f16_round(x) if self.kind == dense.KIND_F16 else bf16_round(x)

    def _rounded(self, x):
        """x rounded to the weight type; once per weight kind for the parts of a FusedLinear sharing x."""
        return _per_input(x, ("round", self.kind), self._round_activations, x)

    def _decode(self, x, out):
        if uses_simd(self.ggml_type) and self.w16.flags.c_contiguous:
            w = self._w_simd
            if w is None:
                w = self._w_simd = (dense_simd.weights(self.w16, self.kind == dense.KIND_BF16),)
            _run_kernel(self, w, dense_simd.mv_half, (self._rounded(x),), out)
        else:
            dense.mv_half(self.w16, self.kind, self._rounded(x), out)

    def _tile(self, r0, tile):
        dense.half_to_f32_range(self.w16, self.kind, r0, tile)

    def _rows(self, ids):
        if self.kind == dense.KIND_F16:
            return self.w16[ids].view(np.float16).astype(np.float32)
        return (self.w16[ids].astype(np.uint32) << 16).view(np.float32)


class LinearQuant(Linear):
    """Quantized weights: repacked row-interleaved for the decode kernel where one exists (else the generic
    dequantize-and-dot kernel over the raw blocks); the raw blocks serve embedding rows and prompt tiles."""

    def __init__(self, ggml_type, raw, shape, name, repack: bool = True):
        super().__init__(ggml_type, raw, shape, name)
        block = BLOCK[ggml_type][0]
        if self.n_in % block:
            raise ModelError(f"tensor {name!r}: row length {self.n_in} is not a multiple of the "
                             f"{ggml_type_name(ggml_type)} block size {block}")
        self.raw = np.asarray(raw).reshape(self.n_out, -1)  # (n_out, bytes_per_row) uint8
        self.kquant = ggml_type in KQUANTS
        self.prompt_by_decode = uses_simd(ggml_type)
        self.packed = None
        self._want_repack = repack and ggml_type in _MV

    def repack(self, R: int | None = None) -> None:
        """Build the row-interleaved copy now (else it is built on the first decode call, so a table that is
        only read by rows -- the token embeddings -- is never repacked). R: rows per group (default: this
        matrix's group_rows); a copy with other groups is rebuilt."""
        if (self.packed is not None and R is not None and not uses_simd(self.ggml_type)
                and self.packed[0].shape[-1] != R):
            self.packed = None
        if self.packed is None and self._want_repack:
            R = R or rows_per_group(self.ggml_type, [self.n_out])
            t, raw, n_out, n_in = self.ggml_type, self.raw, self.n_out, self.n_in
            self.packed = repack_cache.load_or_build([raw], layout_name(t, R),
                                                     lambda: build_packed(t, raw, n_out, n_in, R))
            drop_pages(self.raw)

    @property
    def resident_bytes(self) -> int:
        """Bytes of the repacked copy (0 before the repack or for the generic kernel)."""
        return sum(a.nbytes for a in self.packed) if self.packed else 0

    def _round_activations(self, x):
        return q8.fake_quant_q8_k(x) if self.kquant else q8.fake_quant_q8_0(x)

    def _decode(self, x, out):
        if self.packed is None and self._want_repack:
            self.repack()
        if self.packed is None:
            dequant.matvec_generic(self.ggml_type, self.raw, self._round_activations(x), out, F16_TABLE)
            return
        _decode_packed(self.ggml_type, self.packed, x, out, self)

    def _tile(self, r0, tile):
        dequant.dequant_range(self.ggml_type, self.raw, r0, tile, F16_TABLE)

    def _prompt_simd(self, x, out):
        """Prompts of the explicit-SIMD types: the GEMM or DECODE_MAX-row decode calls (_prompt_packed)."""
        if self.packed is None and self._want_repack:
            self.repack()
        if self.packed is None:
            for a in range(0, x.shape[0], DECODE_MAX):
                self._decode(x[a:a + DECODE_MAX], out[a:a + DECODE_MAX])
            return
        _prompt_packed(self.ggml_type, self.packed, x, out)

    def _prompt(self, x, out):
        if self.ggml_type not in (Q4_1, Q5_1):
            return super()._prompt(x, out)
        # llama.cpp's Q4_1/Q5_1 dot is d*dx*sum(q*qx) + m*s with s = f16(dx*sum qx) (Q8_1): the f16 rounding
        # of s is not in (dx*qx) @ (d*q + m), and it moves logits by ~0.2 -- so the min term goes separately
        qx, dx, sx = q8.quantize_q8_0(x)
        n, k = x.shape
        xr = (qx.reshape(n, k // 32, 32).astype(np.float32) * dx[:, :, None]).reshape(n, k)  # (n, n_in)
        rows = _tile_rows(self.n_in, self.n_out)
        tile = np.empty((rows, self.n_in), np.float32)
        mins = np.empty((rows, self.n_in // 32), np.float32)
        tmp = np.empty((n, rows), np.float32)
        for r0 in range(0, self.n_out, rows):
            m = min(rows, self.n_out - r0)
            dequant.dequant_range_split_min(self.ggml_type, self.raw, r0, tile[:m], mins[:m], F16_TABLE)
            matmul_t(xr, tile[:m], tmp[:, :m])
            tmp[:, :m] += sx @ mins[:m].T
            out[:, r0:r0 + m] = tmp[:, :m]
        self._after_prompt()

    def _after_prompt(self):
        if self.packed is not None:
            drop_pages(self.raw)

    def _rows(self, ids):
        out = np.empty((ids.shape[0], self.n_in), np.float32)
        dequant.dequant_rows(self.ggml_type, self.raw, ids, out, F16_TABLE)
        return out


def make_linear(ggml_type: int, raw: np.ndarray, shape: tuple[int, int], name: str = "",
                repack: bool = True) -> Linear:
    """The Linear for a GGUF tensor; raises ModelError naming the tensor for unsupported types.
    `repack=False` keeps a quantized matrix in its file layout (generic decode kernel; used for tables that are
    only read by rows, and by tests)."""
    isa.level()  # an LLAMACPY_ISA this CPU lacks is refused here, at load (IsaError: one line from the CLI)
    if ggml_type not in SUPPORTED:
        raise ModelError(f"tensor {name!r}: unsupported tensor type {ggml_type_name(ggml_type)}")
    if len(shape) != 2:
        raise ModelError(f"tensor {name!r}: expected a matrix, got shape {tuple(shape)}")
    if ggml_type == F32:
        return LinearF32(ggml_type, raw, shape, name)
    if ggml_type in (F16, BF16):
        return LinearHalf(ggml_type, raw, shape, name)
    return LinearQuant(ggml_type, raw, shape, name, repack=repack)


def _adjacent_half(parts) -> np.ndarray | None:
    """For F16/BF16 parts of one kind whose words lie back to back in one buffer (a GGUF's tensors in file
    order, e.g. ffn_gate then ffn_up), the (sum n_out, n_in) view over all of them; else None. No copy: the
    decode kernel then reads the parts in one call (mv_half's result per row does not depend on the rows in
    the call, so the bits are the parts' own)."""
    if len(parts) < 2 or not all(isinstance(p, LinearHalf) for p in parts):
        return None
    p0 = parts[0]
    ws = [p.w16 for p in parts]
    if (len({p.kind for p in parts}) != 1 or not all(w.flags.c_contiguous for w in ws)
            or len({id(repack_cache._buffer_root(w)) for w in ws}) != 1):
        return None
    for a, b in zip(ws[:-1], ws[1:]):
        if b.ctypes.data != a.ctypes.data + a.nbytes:
            return None
    return np.lib.stride_tricks.as_strided(p0.w16, shape=(sum(w.shape[0] for w in ws), p0.n_in),
                                           strides=p0.w16.strides)


class FusedLinear:
    """Several matrices applied to the same input, as one: y = [x @ W1.T | x @ W2.T | ...] (n, sum n_out).

    For decode, quantized parts of one type whose row counts fill whole row groups are repacked once and
    concatenated, so q/k/v (or gate/up) cost one kernel call instead of three (two): saves the per-call launch
    and dispatch overhead (~15 us a call here) and balances the threads better on small matrices. Mixed types
    (Q4_K_M's Q4_K q, k + Q6_K v) fuse each run of consecutive same-type parts that way (q+k, then v: two calls,
    not three). F16/BF16 parts lying back to back in the file are read as one matrix in place (one call, no
    copy); otherwise the parts run one after the other, sharing the input's quantization / rounding. The prompt
    path runs the parts (or the fused runs). The parts stay usable (their decode then falls back to the generic
    kernel: their repack moved here)."""

    def __init__(self, parts: list, name: str = ""):
        if not parts or len({p.n_in for p in parts}) != 1:
            raise ValueError("fuse_linears: parts must share n_in")
        self.parts = list(parts)
        self.name = name or "+".join(p.name for p in parts)
        self.n_in = parts[0].n_in
        self.n_out = sum(p.n_out for p in parts)
        self.ggml_type = parts[0].ggml_type if len({p.ggml_type for p in parts}) == 1 else None
        self.nbytes = sum(p.nbytes for p in parts)
        self.offsets = np.cumsum([0] + [p.n_out for p in parts])  # column ranges of the parts in y
        self._R = R = rows_per_group(self.ggml_type, [p.n_out for p in parts])
        self._fusable = (self.ggml_type in _MV and all(isinstance(p, LinearQuant) and p._want_repack for p in parts)
                         and all(p.n_out % R == 0 for p in parts[:-1]))  # padding only after the last part
        self._packed = None
        w = _adjacent_half(self.parts)
        self._whole = None if w is None else LinearHalf(parts[0].ggml_type, w, w.shape, self.name)  # (n_out, n_in)
        self._runs = None  # mixed types: [(col a, col b, Linear | FusedLinear)], same-type runs fused
        if self.ggml_type is None:
            runs, i = [], 0
            while i < len(parts):
                j = i + 1
                while j < len(parts) and parts[j].ggml_type == parts[i].ggml_type:
                    j += 1
                sub = FusedLinear(parts[i:j]) if j - i > 1 else None  # one type: never mixed, no recursion
                if sub is not None and (sub._fusable or sub._whole is not None):
                    runs.append((self.offsets[i], self.offsets[j], sub))
                else:
                    runs += [(self.offsets[k], self.offsets[k + 1], parts[k]) for k in range(i, j)]
                i = j
            if len(runs) < len(parts):
                self._runs = runs
        # the parts share x's quantization / rounding only where two of them take the same kind (else each
        # call quantizes x in its own compiled kernel call: MVX / GEMMX)
        kinds = [p.ggml_type for _, _, p in self._runs] if self._runs else [p.ggml_type for p in parts]
        self._share = len(set(kinds)) < len(kinds)

    def _pack(self):
        t, R, parts = self.ggml_type, self._R, self.parts

        def build():
            packs = [p.packed if p.packed is not None and (uses_simd(t) or p.packed[0].shape[-1] == R)
                     else build_packed(t, p.raw, p.n_out, p.n_in, R) for p in parts]
            return tuple(np.concatenate([pk[i] for pk in packs]) for i in range(len(packs[0])))

        self._packed = repack_cache.load_or_build([p.raw for p in parts], layout_name(t, R), build)
        for p in parts:
            drop_pages(p.raw)
            p.packed, p._want_repack = None, False

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if out is None:
            out = np.empty((x.shape[0], self.n_out), np.float32)
        if self._fusable and (x.shape[0] <= DECODE_MAX or uses_simd(self.ggml_type)):
            if self._packed is None:
                self._pack()
            if x.shape[0] <= DECODE_MAX:
                _decode_packed(self.ggml_type, self._packed, x, out, self)
            else:
                _prompt_packed(self.ggml_type, self._packed, x, out)
            return out
        if self._whole is not None and (x.shape[0] <= DECODE_MAX or self._whole.prompt_by_decode):
            return self._whole(x, out)  # decode: mv_half; prompts: gemm_half (bit-exact with it per row)
        runs = self._runs or zip(self.offsets[:-1], self.offsets[1:], self.parts)
        if not self._share:
            for a, b, p in runs:
                out[:, a:b] = p(x)
            return out
        sh = _shared  # this thread's: x is not written during the loop
        prev = sh.x, sh.act
        if x is not prev[0]:
            sh.x, sh.act = x, {}  # the parts quantize x once per weight type (see _simd_activations)
        try:
            for a, b, p in runs:
                out[:, a:b] = p(x)
        finally:
            sh.x, sh.act = prev
        return out

    def split(self, y: np.ndarray) -> list[np.ndarray]:
        """The parts' outputs, C-contiguous (copies of y's columns when y has several rows): the element-wise
        kernels that take them then see one array layout for prompts and decode, so each compiles once, not
        twice (a cold start of stories260K spent ~4.5 s compiling 'A'-layout twins of attention/store_kv/...)."""
        return [np.ascontiguousarray(y[:, a:b]) for a, b in zip(self.offsets[:-1], self.offsets[1:])]


def fuse_linears(parts: list, name: str = "") -> FusedLinear:
    """One Linear over the concatenated outputs of `parts` (same n_in); see FusedLinear."""
    return FusedLinear(parts, name)
