"""Command-line entry point: `llamacpy <command> ...` (one verb per command, llama.cpp's flag spellings).

Owns: dispatching to the command modules and turning `LlamacpyError` into one clear line on stderr with a
non-zero exit. Each command lives in its own module exposing `main(argv: list[str]) -> int`. Start-up and exit
costs of the kernel commands: numba's registries loaded lean before the command (lean_numba.py), and, when this
is the program itself, os._exit at the end (FAST_EXIT).
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys

from .errors import LlamacpyError

COMMANDS = {
    "run": ("llamacpy.cli_run", "generate text from a GGUF model (llama.cpp's llama-cli)"),
    "chat": ("llamacpy.cli_run", "conversation mode (same as `run -cnv`)"),
    "info": ("llamacpy.cli_info", "print a GGUF file's metadata and tensor table (like gguf-dump)"),
    "serve": ("llamacpy.cli_serve", "serve a model over HTTP: OpenAI and llama.cpp APIs (like llama-server)"),
    "bench": ("llamacpy.bench", "measure prompt processing and generation speed (like llama-bench)"),
    "perplexity": ("llamacpy.perplexity", "compute perplexity over a text file (like llama-perplexity)"),
    "quantize": ("llamacpy.quantize", "quantize a GGUF file (like llama-quantize)"),
    "convert": ("llamacpy.convert", "convert Meta/HF/llama2.c checkpoints to GGUF"),
}

# commands whose process runs only llamacpy's jitted code: numba's registries load without scipy.linalg and cffi
# (lean_numba.py; both stay importable for everything else, e.g. the server's own dependencies)
LEAN_NUMBA = {"run", "chat", "bench", "perplexity", "quantize", "serve"}
# commands that start no threads or child processes of their own and write only stdout/stderr: run as the
# program (argv None), they end with os._exit after flushing and running the atexit handlers, skipping the
# interpreter's teardown of numba/LLVM state (~0.2 s of CPU and more of wall time at the end of every run,
# measured with benchmarks/warm_start.py)
FAST_EXIT = {"run", "chat", "bench", "perplexity"}

USAGE = "usage: llamacpy <command> [options]\n\ncommands:\n" + "\n".join(
    f"  {name:<11} {desc}" for name, (_, desc) in COMMANDS.items()
)


def main(argv: list[str] | None = None) -> int:
    """`llamacpy ARGV...`; argv None means this is the program (the console script, `python -m llamacpy`)."""
    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("--version", "-v"):
        from . import __version__

        print(f"llamacpy {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"llamacpy: unknown command {name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if name in LEAN_NUMBA:
        from . import lean_numba

        lean_numba.prepare()
    rc = _dispatch(name, module, rest)
    if program and name in FAST_EXIT:
        _exit_now(rc)
    return rc


def _dispatch(name: str, module, rest: list[str]) -> int:
    try:
        if name == "chat":
            return int(module.main(rest, chat=True) or 0)
        return int(module.main(rest) or 0)
    except LlamacpyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _exit_now(rc: int) -> None:
    """End the process now: flush stdout/stderr, run the atexit handlers, then os._exit (no module teardown)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or a closed stream: nothing more to deliver
            pass
    try:
        atexit._run_exitfuncs()
    finally:
        os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
