"""Test-wide setup: tests/ on sys.path, session-scoped caches of loaded models, and the skip allow-list.

Session caches hold read-only objects (a LlamaModel's weights); every user clears the KV cache before use, so no
test depends on what another left behind.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def cached_model():
    """`cached_model(path, n_ctx=512)` -> a LlamaModel loaded once per session (callers clear `kv` first)."""
    from llamacpy.model import LlamaModel

    cache = {}

    def load(path, n_ctx=512):
        key = (str(path), n_ctx)
        if key not in cache:
            cache[key] = LlamaModel.load(path, n_ctx=n_ctx)
        cache[key].kv.clear()
        return cache[key]

    return load
