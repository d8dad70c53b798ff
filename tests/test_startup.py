"""Start-up cost guards: what `llamacpy run` imports, and numba's lean registry load (lean_numba.py).

No timing asserts (the machine's load would decide them): these check the causes of a slow start instead --
modules a plain `run` must not import, and that numba's registries load without scipy.linalg / cffi while
both stay importable afterwards. benchmarks/warm_start.py measures the time itself.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# packages a plain `run` has no use for; each cost 10-400 ms of start-up when imported
NOT_FOR_RUN = ["fastapi", "uvicorn", "starlette", "pydantic", "llguidance", "jinja2", "huggingface_hub", "tqdm",
               "ray", "httpx", "prometheus_client", "cffi", "scipy.linalg", "regex",
               "llamacpy.chat", "llamacpy.grammar", "llamacpy.tokenizer.bpe", "llamacpy.engine", "llamacpy.api",
               "llamacpy.server", "llamacpy.interactive", "llamacpy.hub"]

_PROBE = """
import json, sys
from llamacpy import cli
rc = cli.main(["run", "-p", "hi", "-n", "2", "--temp", "0"])
print(json.dumps({"rc": rc, "mods": sorted(sys.modules)}))
"""


def _run_probe(code: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_plain_run_does_not_import_what_it_does_not_use():
    # the demo model (SentencePiece vocabulary, no chat template): plain generation, no server, no grammar
    res = _run_probe(_PROBE)
    assert res["rc"] == 0
    loaded = set(res["mods"])
    assert "llamacpy.model" in loaded  # the probe really ran the model
    assert sorted(m for m in NOT_FOR_RUN if m in loaded) == []


def test_lean_registries_leave_scipy_and_cffi_importable():
    code = """
import json, sys
from llamacpy import lean_numba
lean_numba.prepare()
hidden_during = [m for m in ("scipy.linalg", "cffi") if m in sys.modules]
back = {m: sys.modules.get(m, 0) is not None for m in ("scipy.linalg", "cffi")}
ok = {}
for m in ("scipy.linalg", "cffi"):
    try:
        __import__(m)
        ok[m] = True
    except ImportError:
        ok[m] = None  # not installed here: nothing to check
import numba, numpy as np
@numba.njit
def f(a):
    s = 0.0
    for x in a:
        s += x
    return s
print(json.dumps({"during": hidden_during, "back": back, "ok": ok, "f": f(np.arange(4.0))}))
"""
    res = _run_probe(code)
    assert res["during"] == []  # prepare() imported neither
    assert all(res["back"].values())  # no None placeholder left in sys.modules
    assert all(v in (True, None) for v in res["ok"].values())
    assert res["f"] == 6.0  # numba still compiles after the lean load


_BLAS_CALLS = {"dot", "vdot", "inner", "outer", "matmul", "kron", "trace", "cov", "corrcoef"}


def _jitted(fn: ast.FunctionDef) -> bool:
    for d in fn.decorator_list:
        text = ast.unparse(d)
        if any(k in text for k in ("jit", "JIT", "vectorize", "stencil")):
            return True
    return False


def test_no_kernel_needs_numbas_blas():
    """lean_numba hides scipy.linalg from numba: a jitted function calling np.dot/np.linalg/`@` would then fail
    to compile in the CLI. This keeps that assumption true as kernels are added."""
    bad = []
    for path in sorted((SRC / "llamacpy").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef) or not _jitted(fn):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
                    bad.append(f"{path.name}:{node.lineno} @")
                elif isinstance(node, ast.Attribute) and (node.attr in _BLAS_CALLS or node.attr == "linalg"):
                    base = ast.unparse(node.value)
                    if base in ("np", "numpy") or base.startswith(("np.", "numpy.")):
                        bad.append(f"{path.name}:{node.lineno} {base}.{node.attr}")
    assert bad == []


def test_program_run_flushes_everything_before_its_fast_exit():
    # `python -m llamacpy run` ends with os._exit (cli.FAST_EXIT): piped stdout is block-buffered, so text and
    # llama.cpp's timing lines arrive only if _exit_now flushed them
    env = dict(os.environ, PYTHONPATH=str(SRC))
    r = subprocess.run([sys.executable, "-m", "llamacpy", "run", "-p", "Once upon a time", "-n", "8", "--temp", "0"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(" Once upon a time") and len(r.stdout) > len(" Once upon a time\n")
    assert r.stdout.endswith("\n")
    assert "llama_perf_context_print:       total time" in r.stderr
    bad = subprocess.run([sys.executable, "-m", "llamacpy", "run", "-p", "x", "-n", "-7"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error:") and "Traceback" not in bad.stderr


def test_lean_registries_skip_the_extension_scan():
    code = """
import json, sys
from importlib import metadata
calls = []
real = metadata.entry_points
metadata.entry_points = lambda *a, **k: calls.append(1) or real(*a, **k)
from llamacpy import lean_numba
lean_numba.prepare()
from llamacpy.kernels import ops
import numpy as np
x = np.ones((1, 8), np.float32)
ops.add_inplace(x, x)  # a kernel's first call: numba's compilation-chain hook would run the extension scan
print(json.dumps({"scans": len(calls), "x": float(x.sum())}))
"""
    res = _run_probe(code)
    assert res == {"scans": 0, "x": 16.0}
