"""Child process of test_neon_emulated.py: compile NEON kernels for AArch64 and *run* them on an emulated AArch64 CPU.

Run as `python neon_emulate_child.py CASES.npz CASE=MODULE:FUNC[:RTxTT[s]] ...` (a GEMM's tile token first). As in neon_codegen_child.py, llvmlite is told
the process triple is aarch64 before numba loads, so numba's JIT links AArch64 code into this (x86) process's
memory, where it must never be called. Each kernel is compiled as a serial twin (the same Python source under
njit without parallel=True: prange runs as range, the loop body is the same code) for the argument arrays of its
case, and its native entry point is run by Unicorn (an AArch64 emulator, CPU model "max": NEON, dotprod, fp16):
    - the emulator's memory is this process's memory, page by page on first touch (code, constants, the argument
      arrays); the arrays' pages are written back from the emulator after the run (the kernel's output);
    - a jump into code that is not JIT code (an x86 library: only NRT reference counting is expected) lands on a
      page of `ret` instructions and is recorded;
    - arguments follow numba's native calling convention flattened to AAPCS64: x0 = return slot, x1 = exception
      slot, then every argument's data-model members (an array: meminfo, parent, nitems, itemsize, data, shape..,
      strides..), x2..x7 then the stack, 8 bytes each.
Writes CASES.out.npz with each case's output array and prints one JSON line {case: {"status", "externals"}}.
Must not: run anything jitted natively (it is AArch64 code).
"""

import ctypes
import importlib
import json
import sys

from neon_target import ll  # noqa: E402  (before numba: AArch64 code generation)

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402
from numba import typeof  # noqa: E402
from unicorn import UC_ARCH_ARM64, UC_HOOK_MEM_UNMAPPED, UC_MEM_FETCH_UNMAPPED, UC_MODE_ARM, UC_PROT_ALL, Uc  # noqa: E402
from unicorn import arm64_const as A  # noqa: E402

from llamacpy.kernels import simd  # noqa: E402

PAGE = 4096
RET = (0xD65F03C0).to_bytes(4, "little")  # AArch64 `ret`
STACK, STACK_SIZE, DONE = 0x7E0000000000, 8 << 20, 0x7F0000000000  # free in a user-space x86-64 layout


def _maps():
    out = []
    with open("/proc/self/maps") as f:
        for ln in f:
            parts = ln.split()
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            out.append((lo, hi, parts[1], parts[5] if len(parts) > 5 else ""))
    return out


def _flat_args(tok, pre, arrays):
    """The native convention's integer arguments after (retptr, excinfo): the level token's and each `pre`
    token's opaque pointer (the GEMM's tile), then each array's data-model members."""
    vals = [0] * (1 + len(pre))
    for a in arrays:
        vals += [0, 0, a.size, a.itemsize, a.ctypes.data, *a.shape, *a.strides]
    return vals


def run(disp_src, pre, arrays, jit_code):
    """Compile the serial twin of disp_src(token, *pre, *arrays) and run it under Unicorn; returns (status,
    externals)."""
    tok = simd.token("neon")
    twin = nb.njit(fastmath=True, nogil=True)(disp_src.py_func)
    sig = (typeof(tok),) + tuple(typeof(a) for a in (*pre, *arrays))
    before = {(lo, hi) for lo, hi, perm, path in _maps() if "x" in perm}
    twin.compile(sig)
    cres = twin.overloads[sig]
    entry = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
    jit_code |= {(lo, hi) for lo, hi, perm, path in _maps() if "x" in perm and not path} - before
    n_ir_args = len(list(ll.parse_assembly(cres.library.get_llvm_str()).get_function(
        cres.fndesc.llvm_func_name).arguments))
    args = _flat_args(tok, pre, arrays)
    assert n_ir_args == 2 + len(args), f"native signature has {n_ir_args} arguments, packed {2 + len(args)}"

    regions = _maps()
    externals = set()
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.ctl_set_cpu_model(A.UC_CPU_ARM64_MAX)
    uc.reg_write(A.UC_ARM64_REG_CPACR_EL1, 0x300000)  # FP/SIMD on

    def on_unmapped(uc_, access, addr, size, value, data):
        page = addr & ~(PAGE - 1)
        for lo, hi, perm, path in regions:
            if lo <= addr < hi and "r" in perm:
                break
        else:
            return False  # not this process's memory: a real fault
        if access == UC_MEM_FETCH_UNMAPPED and not any(lo <= addr < hi for lo, hi in jit_code):
            externals.add(addr)  # x86 code: answer with returns
            uc_.mem_map(page, PAGE, UC_PROT_ALL)
            uc_.mem_write(page, RET * (PAGE // 4))
        else:
            uc_.mem_map(page, PAGE, UC_PROT_ALL)
            uc_.mem_write(page, ctypes.string_at(page, PAGE))
        return True

    uc.hook_add(UC_HOOK_MEM_UNMAPPED, on_unmapped)
    uc.mem_map(STACK, STACK_SIZE, UC_PROT_ALL)
    uc.mem_map(DONE, PAGE, UC_PROT_ALL)
    uc.mem_write(DONE, RET * (PAGE // 4))
    slots = STACK + STACK_SIZE - PAGE  # return value and exception slots
    full = [slots, slots + 64] + args
    sp = (slots - 8 * max(0, len(full) - 8) - 256) & ~15
    for i, v in enumerate(full):
        if i < 8:
            uc.reg_write(getattr(A, f"UC_ARM64_REG_X{i}"), v)
        else:
            uc.mem_write(sp + 8 * (i - 8), int(v).to_bytes(8, "little", signed=v < 0))
    uc.reg_write(A.UC_ARM64_REG_SP, sp)
    uc.reg_write(A.UC_ARM64_REG_LR, DONE)
    uc.emu_start(entry, DONE, count=2_000_000_000)
    status = uc.reg_read(A.UC_ARM64_REG_X0) & 0xFFFFFFFF
    for a in arrays:  # the kernel's writes: copy the argument arrays' pages back
        lo, hi = a.ctypes.data, a.ctypes.data + a.nbytes
        if hi > lo:
            buf = uc.mem_read(lo, hi - lo)
            ctypes.memmove(lo, bytes(buf), hi - lo)
    return status, sorted(hex(e) for e in externals)


def main(cases_path, specs):
    data = np.load(cases_path)
    results, outs, jit_code = {}, {}, set()
    for spec in specs:  # "case=module:func" or "case=module:func:RTxTT[s]" (a GEMM's tile before the arrays)
        case, target = spec.split("=")
        module, func, *tile = target.split(":")
        pre = ()
        if tile:
            from llamacpy.kernels import gemm_simd

            rt, tt = tile[0].rstrip("s").split("x")
            pre = (gemm_simd.tile(int(rt), int(tt), tile[0].endswith("s")),)
        arrays = [np.ascontiguousarray(data[f"{case}/{i}"]) for i in range(int(data[f"{case}/n"]))]
        status, externals = run(getattr(importlib.import_module(module), func), pre, arrays, jit_code)
        outs[case] = arrays[-1]
        results[case] = dict(status=int(status), externals=externals)
    np.savez(cases_path[:-4] + ".out.npz", **outs)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
