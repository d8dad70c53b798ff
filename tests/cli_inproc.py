"""Run `llamacpy ...` in this process (cli.main + capsys) -- the cheap way to test error paths and output.

A subprocess costs ~1.6 s of interpreter and numba start-up; a few real subprocess smoke tests stay elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(capsys, *args, stdin: bytes = b"") -> Result:
    """`llamacpy ARGS` with `stdin` as its (non-terminal) standard input; stdout/stderr as text."""
    import io
    import sys

    from llamacpy import cli

    capsys.readouterr()  # drop anything printed before
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse errors exit(2) after printing usage + one error line
        rc = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdin = saved
    out = capsys.readouterr()
    return Result(rc, out.out, out.err)
