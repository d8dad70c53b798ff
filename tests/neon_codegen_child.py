"""Child process of test_neon_codegen.py: compile kernels at the "neon" level for AArch64 and report their assembly.

Run as `python neon_codegen_child.py SPECS_JSON`. Before numba loads, llvmlite is told the process triple is
aarch64-unknown-linux-gnu (CPU "generic" with +neon,+dotprod), so numba's whole pipeline -- the parallel
gufunc wrappers included -- emits AArch64 code. Nothing compiled here may run (it is not this CPU's code): only
the kernels named in the specs are compiled, from argument *types* (tiny zero arrays of the recorded dtype and
ndim, or a GEMM's tile token), never called. Prints one JSON object {kernel name: {"sdot": n, "fcvtl": n, "x86": n, "lines": n}}.
Must not: import anything that runs jitted code at import time.
"""

import importlib
import json
import sys

import neon_target  # noqa: F401,E402  (before numba: AArch64 code generation)

import numpy as np  # noqa: E402
from numba import typeof  # noqa: E402

from llamacpy.kernels import simd  # noqa: E402

X86_MNEMONICS = ("vpdpbusd", "vpmaddubsw", "vcvtph2ps", "zmm", "ymm", "xmm")


def _arg(spec):
    """A stand-in of the recorded type: ["tile", rt, tt, spread] a gemm_simd tile token, else (dtype, ndim)."""
    if spec[0] == "tile":
        from llamacpy.kernels import gemm_simd

        return gemm_simd.tile(*spec[1:])
    dt, nd = spec
    return np.zeros((1,) * nd, dt)


def main(specs: list) -> dict:
    tok = simd.token("neon")
    out = {}
    for name, module, func, arg_specs in specs:
        disp = getattr(importlib.import_module(module), func)
        args = [tok] + [_arg(a) for a in arg_specs]
        sig = tuple(typeof(a) for a in args)
        disp.compile(sig)
        asm = disp.inspect_asm(sig)
        out[name] = dict(sdot=asm.count("sdot"), fcvtl=asm.count("fcvtl"), lines=asm.count("\n"),
                         x86=sum(asm.count(m) for m in X86_MNEMONICS))
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
