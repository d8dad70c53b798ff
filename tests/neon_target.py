"""Make this process's numba compile for AArch64 (+neon, +dotprod): imported by the NEON test children before numba.

Tells llvmlite the process triple is aarch64-unknown-linux-gnu and numba the CPU is "generic" with the NEON
features, so numba's JIT links AArch64 code into this x86 process (it must never be called natively); the numba
cache goes to a temporary folder, so no AArch64 object lands in the project's cache.
Must not: be imported after numba, or by any process that runs jitted code.
"""

import os
import tempfile

os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="llamacpy-neon-")
os.environ["NUMBA_CPU_NAME"] = "generic"
os.environ["NUMBA_CPU_FEATURES"] = "+neon,+dotprod,+fp-armv8,+fullfp16"

import llvmlite.binding as ll  # noqa: E402

ll.initialize_all_targets()
ll.initialize_all_asmprinters()
TRIPLE = "aarch64-unknown-linux-gnu"
ll.get_process_triple = lambda: TRIPLE
ll.Target.from_default_triple = classmethod(lambda cls: ll.Target.from_triple(TRIPLE))
