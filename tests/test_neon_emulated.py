"""The NEON level's kernels *run* on an emulated AArch64 CPU (Unicorn, CPU model "max": NEON + dotprod + fp16) and
give the reference's results, on whatever CPU runs the tests.

No ARM machine runs this suite, and an x86 CPU cannot execute AArch64 code; tests/neon_emulate_child.py compiles
each NEON kernel for AArch64 (numba's own pipeline, told the target is aarch64) as a serial twin of the kernel's
source (njit without parallel: prange runs as range; the loop body is the same code) and runs it in the emulator
on the arrays made here by the real repack/prep code. Checked like every x86 level in test_simd*.py /
test_gemm_simd.py, with the same references and tolerance (1e-5 of max |ref|: f32 accumulation order only):
    - decode matvecs of the 10 explicit-SIMD types against the numpy dequantize-then-matmul reference;
    - the prompt GEMMs (Q4_0, Q8_0, Q4_K, Q6_K; tiles with row and token remainders) bit for bit equal to the
      NEON matvec on the same data (the property prefix reuse and batching rest on), and so to the reference;
    - the F16/BF16 matvec (odd token count: the single-token tail loop; n_in with a scalar tail).
The parallel wrappers themselves are checked to compile for AArch64 in test_neon_codegen.py, and so is the F16/BF16
prompt GEMM (gemm_half), which is not run here: it allocates its packing buffers (NRT calls into x86 code).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from gguf import GGMLQuantizationType as T

from llamacpy.kernels.common import KQUANTS, bf16_round, f16_round
from llamacpy.kernels import dense_simd, gemm_simd, kquants_simd, legacy_simd, q8
from test_kernels import random_blocks
from test_simd_kquants import _ref as kquant_reference
from test_simd_more import _half, _reference as legacy_reference

CHILD = os.path.join(os.path.dirname(__file__), "neon_emulate_child.py")
TOL = 1e-5  # of max |ref|, as test_simd*.py: the integer sums are exact, f32 accumulation order differs


def _cases(rng):
    """{case: (module:function, argument arrays with the output last, reference or None)}."""
    cases = {}
    n_out, n_tok = 9, 11  # NEON tiles are 4 rows x 4 / 3 tokens: both leave remainders
    for mod in (legacy_simd, kquants_simd):
        for typ in mod.TYPES:
            n_in = 2304 if typ in KQUANTS else 2080  # 9 super-blocks / 65 blocks: padded groups
            raw = random_blocks(typ, n_out, n_in, rng)
            packed = mod.repack_rows(typ, raw, n_out, n_in, "neon")
            x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
            res = q8.quantize_q8_k(x) if typ in KQUANTS else q8.quantize_q8_0(x)
            act = mod.prep(typ, "neon", *res[:3])
            ref = (kquant_reference(T(typ), raw, n_out, n_in, x) if typ in KQUANTS
                   else legacy_reference(T(typ), raw, n_out, n_in, x))
            name = T(typ).name
            cases[f"mv-{name}"] = (f"{mod.__name__}:{mod.MV[typ].__name__}",
                                   [*packed, *act, np.full((n_tok, n_out), np.nan, np.float32)], ref)
            if typ in gemm_simd.GEMM:
                tl = gemm_simd.prompt_tile(typ, "neon")
                target = f"{gemm_simd.__name__}:{gemm_simd.GEMM[typ].__name__}:{tl.rt}x{tl.tt}{'s' if tl.spread else ''}"
                cases[f"gemm-{name}"] = (target, [*packed, *act, np.full((n_tok, n_out), np.nan, np.float32)], ref)
    for bf in (False, True):
        bits, vals = _half(bf, 5, 1000, rng, extreme=False)
        x = (bf16_round if bf else f16_round)(rng.standard_normal((5, 1000)).astype(np.float32))
        cases["mv-" + ("BF16" if bf else "F16")] = (  # mv_half's parallel kernel (mv_half itself allocates)
            f"{dense_simd.__name__}:mv_half_words",
            [dense_simd.weights(bits, bf), dense_simd.words(x, bf), np.full((5, 5), np.nan, np.float32)],
            x.astype(np.float64) @ vals.T)
    return cases


def test_neon_kernels_run_on_emulated_aarch64_and_match_the_reference(tmp_path):
    cases = _cases(np.random.default_rng(11))
    arrays = {}
    for case, (_, args, _) in cases.items():
        arrays[f"{case}/n"] = np.array(len(args))
        arrays.update({f"{case}/{i}": a for i, a in enumerate(args)})
    path = str(tmp_path / "cases.npz")
    np.savez(path, **arrays)
    specs = [f"{case}={target}" for case, (target, _, _) in cases.items()]
    r = subprocess.run([sys.executable, CHILD, path, *specs], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"emulated run failed (rc {r.returncode}):\n{r.stderr[-3000:]}"
    status = json.loads(r.stdout.strip().splitlines()[-1])
    out = np.load(path[:-4] + ".out.npz")
    assert sorted(status) == sorted(cases)
    for case, (_, _, ref) in cases.items():
        assert status[case]["status"] == 0, (case, status[case])  # numba's "no exception" return
        y = out[case]
        assert np.isfinite(y).all(), case  # every output written
        err = np.abs(y - ref).max() / np.abs(ref).max()
        assert err <= TOL, (case, err)
    for name in ("Q4_0", "Q8_0", "Q4_K", "Q6_K"):  # the GEMM equals the matvec bit for bit on NEON too
        assert np.array_equal(out[f"gemm-{name}"], out[f"mv-{name}"]), name
