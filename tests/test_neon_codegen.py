"""The NEON level's kernels compile to AArch64 machine code (cross-compiled here, on whatever CPU runs the tests).

No ARM machine has run the "neon" level yet (isa.py keeps it forced-only), and an x86 CPU cannot execute it. What
can be checked anywhere: that every NEON kernel -- decode matvecs of every explicit-SIMD type, the prompt GEMMs,
the F16/BF16 matvec and GEMM -- passes numba's whole pipeline (the parallel wrappers included) and LLVM's AArch64 backend
with +dotprod, and that the integer kernels really use `sdot` (not a scalar fallback) and no x86 instruction
leaks in. A wrong intrinsic name or vector type aborts the backend ("Cannot select: intrinsic ..."), which this
test reports with the child's stderr. The arguments' dtypes and ranks come from the real repack/prep code run
here (tests/neon_codegen_child.py compiles from those types and runs nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from gguf import GGMLQuantizationType as T

from llamacpy.kernels import dense_simd, gemm_half, gemm_simd, kquants_simd, legacy_simd, q8
from llamacpy.kernels.common import KQUANTS
from test_kernels import random_blocks

CHILD = os.path.join(os.path.dirname(__file__), "neon_codegen_child.py")


def _specs() -> list:
    """(name, module, function, [(dtype, ndim) of every argument after the level token]) per NEON kernel."""
    rng = np.random.default_rng(0)
    n_out, n_in, n_tok = 16, 512, 2
    x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
    y = np.empty((n_tok, n_out), np.float32)
    specs = []
    for mod in (legacy_simd, kquants_simd):
        for typ in mod.TYPES:
            raw = random_blocks(typ, n_out, n_in, rng)
            packed = mod.repack_rows(typ, raw, n_out, n_in, "neon")
            res = q8.quantize_q8_k(x) if typ in KQUANTS else q8.quantize_q8_0(x)
            act = mod.prep(typ, "neon", *res[:3])
            arg_specs = [(a.dtype.str, a.ndim) for a in (*packed, *act, y)]
            specs.append((f"mv {T(typ).name}", mod.__name__, mod.MV[typ].__name__, arg_specs))
            if typ in gemm_simd.GEMM:
                tl = gemm_simd.prompt_tile(typ, "neon")
                specs.append((f"gemm {T(typ).name}", gemm_simd.__name__, gemm_simd.GEMM[typ].__name__,
                              [("tile", tl.rt, tl.tt, tl.spread)] + arg_specs))
    for bf16 in (False, True):
        w = dense_simd.weights(rng.integers(0, 1 << 15, (n_out, n_in)).astype(np.uint16), bf16)
        name = "BF16" if bf16 else "F16"
        half_args = [(a.dtype.str, a.ndim) for a in (w, x, y)]
        specs.append((f"mv {name}", dense_simd.__name__, "mv_half", half_args))
        specs.append((f"mv words {name}", dense_simd.__name__, "mv_half_words", [(a.dtype.str, a.ndim) for a in (
            w, dense_simd.words(x, bf16), y)]))
        specs.append((f"gemm {name}", gemm_half.__name__, "gemm_half", half_args))
    return specs


def test_every_neon_kernel_compiles_for_aarch64_with_sdot():
    specs = _specs()
    r = subprocess.run([sys.executable, CHILD, json.dumps(specs)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"AArch64 compile failed (rc {r.returncode}):\n{r.stderr[-3000:]}"
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(got) == sorted(name for name, *_ in specs)
    for name, asm in got.items():
        assert asm["x86"] == 0, (name, asm)  # AArch64 code only
        if name.startswith(("mv Q", "gemm Q")):  # integer kernels: the dot-product instruction itself
            assert asm["sdot"] > 0, (name, asm)
        else:  # F16/BF16: f16 -> f32 lanes in registers (BF16 by a shift, no fcvtl needed)
            assert asm["lines"] > 50, (name, asm)
    assert got["mv F16"]["fcvtl"] > 0 and got["gemm F16"]["fcvtl"] > 0, (got["mv F16"], got["gemm F16"])
