"""Test-wide setup: tests/ on sys.path, session-scoped caches of loaded models, the skip allow-list, and the check
that every ../shared/golden/MANIFEST.json file is read by some test.

Session caches hold read-only objects (a LlamaModel's weights); every user clears the KV cache before use, so no
test depends on what another left behind.
"""

import atexit
import os
import shutil
import sys
import tempfile
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


# -- skips: listed by `-rs`; under CI (CI=true) or LLAMACPY_STRICT_SKIPS=1 any skip not on the allow-list fails -----
ALLOWLIST = Path(__file__).with_name("skips_allowed.txt")
_skips: list[tuple[str, str]] = []


def _allowed() -> list[tuple[str, str]]:
    """Lines `NODEID-GLOB | REASON-SUBSTRING` of skips_allowed.txt (# comments)."""
    out = []
    for line in ALLOWLIST.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            glob, _, reason = line.partition("|")
            out.append((glob.strip(), reason.strip()))
    return out


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skips.append((report.nodeid, reason.removeprefix("Skipped: ")))


def _strict() -> bool:
    import os

    return os.environ.get("CI", "").lower() == "true" or os.environ.get("LLAMACPY_STRICT_SKIPS") == "1"


def _check_skips(session) -> list[str]:
    if not _strict() or not _skips:
        return []
    from fnmatch import fnmatch

    allowed = _allowed()
    bad = [(n, r) for n, r in _skips if not any(fnmatch(n, g) and s in r for g, s in allowed)]
    if not bad:
        return []
    return ["skips not on tests/skips_allowed.txt (a skip must not stand in for a missing feature):"] + [
        f"  {n}: {r}" for n, r in bad]


# -- every file of ../shared/golden/MANIFEST.json is read by some test ------------------------------------------------
# An audit hook records every file the tests open under ../shared (np.load, GGUFFile, open, mmap all go through
# open()). With LLAMACPY_CHECK_SHARED_USAGE=1 (set by .ci/run), a complete run fails if a MANIFEST file was read by no
# test: the default run must read every file except those in shared_slow_only.txt, and `-m slow` must read those.
SLOW_ONLY = Path(__file__).with_name("shared_slow_only.txt")
_opened: set[str] = set()


def _record_opens():
    import os

    from shared import have_shared, shared_dir

    if not have_shared():
        return
    root = os.path.realpath(shared_dir()) + os.sep

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            p = os.fsdecode(args[0])
            if p.startswith(root) or os.path.realpath(p).startswith(root):
                _opened.add(os.path.relpath(os.path.realpath(p), root[:-1]))

    sys.addaudithook(hook)


def pytest_configure(config):
    _record_opens()


def _slow_only() -> set[str]:
    return {ln.split("#", 1)[0].strip() for ln in SLOW_ONLY.read_text().splitlines()} - {""}


def unread_manifest_files(opened: set[str], markexpr: str) -> list[str]:
    import json

    from shared import golden_dir

    manifest = {f["path"] for f in json.loads((golden_dir() / "MANIFEST.json").read_text())["files"]}
    slow = _slow_only()
    wanted = slow if markexpr.strip() == "slow" else manifest - slow
    return sorted(wanted - opened)


def _complete_run(config) -> bool:
    """The whole suite was selected: no paths, no -k, the default marker expression or `slow`."""
    args = [a for a in config.args if a not in ("tests", "tests/")]
    return not args and not config.option.keyword and config.option.markexpr.strip() in ("not slow", "slow")


def _check_shared_usage(session) -> list[str]:
    import os

    from shared import have_shared

    if os.environ.get("LLAMACPY_CHECK_SHARED_USAGE") != "1" or not have_shared() or not _complete_run(session.config):
        return []
    unread = unread_manifest_files(_opened, session.config.option.markexpr)
    if not unread:
        return []
    return ["MANIFEST.json files no test read in this run (use them, or list slow-only ones in "
            "tests/shared_slow_only.txt):"] + [f"  {p}" for p in unread]


def pytest_sessionfinish(session, exitstatus):
    problems = _check_skips(session) + _check_shared_usage(session)
    if problems:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        (tr.write_line if tr else print)("\n".join(problems))
        session.exitstatus = 1


# The repack cache (kernels/repack_cache.py) of a test run lives in a temporary folder, never in the user's
# ~/.cache; subprocesses started by tests inherit it. A caller's own LLAMACPY_REPACK_CACHE wins.
if "LLAMACPY_REPACK_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="llamacpy-test-repack-")
    os.environ["LLAMACPY_REPACK_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, True)
