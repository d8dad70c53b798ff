import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The repack cache (kernels/repack_cache.py) of a test run lives in a temporary folder, never in the user's
# ~/.cache; subprocesses started by tests inherit it. A caller's own LLAMACPY_REPACK_CACHE wins.
if "LLAMACPY_REPACK_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="llamacpy-test-repack-")
    os.environ["LLAMACPY_REPACK_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, True)
