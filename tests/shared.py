"""The one place tests locate ../shared (models, golden data).

`LLAMACPY_SHARED` overrides the location. Without it, `../shared` next to the project root is used. When it is
absent, golden tests skip with a clear reason -- except under CI (CI=true), where its absence is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _location() -> Path:
    env = os.environ.get("LLAMACPY_SHARED")
    return Path(env) if env else PROJECT_ROOT.parent / "shared"


def have_shared() -> bool:
    """For code that runs at import/collection time (parametrize lists): never skips, never fails."""
    return (_location() / "golden").is_dir()


def shared_dir() -> Path:
    path = _location()
    if not (path / "golden").is_dir():
        msg = f"shared test data not found at {path} (set LLAMACPY_SHARED)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " -- required under CI")
        pytest.skip(msg)
    return path


def models_dir() -> Path:
    return shared_dir() / "models"


def golden_dir() -> Path:
    return shared_dir() / "golden"
