"""The MANIFEST usage check itself (conftest.py): opens under ../shared are recorded, and the check names what no
test read. The check runs at the end of complete runs with LLAMACPY_CHECK_SHARED_USAGE=1 (.ci/run sets it)."""

import json
import sys

from shared import golden_dir


def _conftest():
    return next(m for name, m in sys.modules.items() if name.endswith("conftest") and hasattr(m, "_opened"))


def test_opens_under_shared_are_recorded():
    with open(golden_dir() / "README.md") as f:
        f.read(10)
    assert "golden/README.md" in _conftest()._opened


def test_unread_files_are_named():
    c = _conftest()
    manifest = [f["path"] for f in json.loads((golden_dir() / "MANIFEST.json").read_text())["files"]]
    slow = c._slow_only()
    assert slow <= set(manifest)  # the slow-only list names MANIFEST files only
    assert c.unread_manifest_files(set(manifest), "not slow") == []
    default = [p for p in manifest if p not in slow]
    assert c.unread_manifest_files(set(manifest) - {default[0]}, "not slow") == [default[0]]
    assert c.unread_manifest_files(set(), "slow") == sorted(slow)
