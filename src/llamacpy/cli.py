"""Command-line entry point: `llamacpy <command> ...` (one verb per command, llama.cpp's flag spellings).

Owns: dispatching to the command modules and turning `LlamacpyError` into one clear line on stderr with a
non-zero exit. Each command lives in its own module exposing `main(argv: list[str]) -> int`.
"""

from __future__ import annotations

import importlib
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

# commands whose process runs only llamacpy's jitted code: numba's registries load without scipy/cffi (lean_numba)
LEAN_NUMBA = {"run", "chat", "bench", "perplexity", "quantize"}

USAGE = "usage: llamacpy <command> [options]\n\ncommands:\n" + "\n".join(
    f"  {name:<11} {desc}" for name, (_, desc) in COMMANDS.items()
)


def main(argv: list[str] | None = None) -> int:
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
    try:
        if name == "chat":
            return module.main(rest, chat=True)
        return int(module.main(rest) or 0)
    except LlamacpyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
