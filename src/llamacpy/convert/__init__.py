"""`llamacpy convert SRC [--outtype f32|f16|bf16|q8_0] [--outfile PATH] [--vocab-only]`
(legacy GGML/GGMF/GGJT files: `llamacpy convert old.bin [--gqa N] [--eps E] [-c N] [--vocab-dir DIR]`).

Owns: the command line, detecting the checkpoint format from SRC (a folder with config.json: Hugging Face;
with params.json: Meta original; a file starting with a GGML/GGMF/GGJT magic: legacy ggml; another .bin
file: llama2.c), choosing the output path, and handing the plan
(metadata + lazy tensor specs) to the project's streaming, atomic GGUF writer.

Must not: know any format's details (hf.py, meta.py, llama2c.py do) or write GGUF bytes itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import ConvertError, OUTTYPES, UnsafePickleError, progress_factory

__all__ = ["main", "convert", "detect_format", "ConvertError", "UnsafePickleError"]


def detect_format(src: Path) -> str:
    """'hf', 'meta', 'ggml' or 'llama2c'."""
    if not src.exists():
        raise ConvertError(f"{src}: no such file or folder")
    if src.is_file():
        from .ggml import is_legacy_ggml

        if is_legacy_ggml(src):
            return "ggml"
        if src.name in ("config.json", "params.json") or src.suffix in (".pth", ".safetensors"):
            return detect_format(src.parent)
        if src.suffix == ".bin" and not src.name.startswith("pytorch_model"):
            return "llama2c"
        if src.name.startswith("pytorch_model"):
            return detect_format(src.parent)
        raise ConvertError(f"{src}: not a recognised checkpoint (expected a llama2.c .bin, or a folder)")
    if (src / "config.json").is_file():
        return "hf"
    if (src / "params.json").is_file():
        return "meta"
    if any(src.glob("consolidated.*.pth")):
        raise ConvertError(f"{src}: params.json is missing (Meta checkpoint with consolidated.*.pth)")
    if any(src.glob("*.safetensors")) or any(src.glob("pytorch_model*.bin")):
        raise ConvertError(f"{src}: config.json is missing (Hugging Face checkpoint)")
    raise ConvertError(f"{src}: no config.json (Hugging Face) or params.json (Meta) found")


def convert(src: str | os.PathLike, outfile: str | os.PathLike | None = None, outtype: str = "f16",
            vocab_only: bool = False, vocab: str | os.PathLike | None = None, progress: bool = True,
            legacy: dict | None = None) -> Path:
    """Convert a checkpoint to GGUF; returns the output path. `legacy`: gqa / eps / n_ctx / vocab_dir for
    GGML-family files (their tensors keep their own types: `outtype` does not apply)."""
    from ..gguf_writer import write_gguf

    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown --outtype {outtype!r} (choose from {', '.join(OUTTYPES)})")
    src = Path(src)
    fmt = detect_format(src)
    if fmt == "ggml":
        from . import ggml

        kvs, specs = ggml.plan(src, **(legacy or {}))
        default = src.with_suffix(".gguf")
    elif fmt == "llama2c":
        from . import llama2c

        kvs, specs = llama2c.plan(src, Path(vocab) if vocab else None, outtype, vocab_only)
        default = src.with_suffix(".gguf") if not vocab_only else src.with_name(src.stem + "-vocab.gguf")
    else:
        d = src if src.is_dir() else src.parent
        mod = __import__(f"{__name__}.{fmt}", fromlist=["plan"])
        kvs, specs = mod.plan(d, outtype, vocab_only)
        default = d / (f"ggml-vocab-{d.name}.gguf" if vocab_only else f"ggml-model-{outtype}.gguf")
    out = Path(outfile) if outfile else default
    write_gguf(out, kvs, specs, progress=progress_factory() if progress else None)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="llamacpy convert",
                                description="Convert a Meta, Hugging Face or llama2.c checkpoint to GGUF.")
    p.add_argument("src", help="HF folder (config.json), Meta folder (params.json) or llama2.c .bin checkpoint")
    p.add_argument("--outtype", default="f16", choices=list(OUTTYPES),
                   help="type of the 2-D weights (1-D tensors and norms stay f32); default f16")
    p.add_argument("--outfile", help="output path (default: next to the checkpoint)")
    p.add_argument("--vocab-only", action="store_true", help="write only the metadata and vocabulary")
    p.add_argument("--vocab", help="llama2.c tokenizer .bin (default: tokenizer.bin or tok*.bin next to SRC)")
    g = p.add_argument_group("legacy GGML / GGMF / GGJT files (as llama.cpp's convert_llama_ggml_to_gguf.py)")
    g.add_argument("--gqa", type=int, default=1, help="grouped-query attention factor (8 for LLaMA-2 70B)")
    g.add_argument("--eps", type=float, default=5e-6, help="RMS norm epsilon (1e-5 for LLaMA-2, 1e-6 for LLaMA-1)")
    g.add_argument("-c", "--context-length", dest="context_length", type=int, default=2048,
                   help="context length to record (LLaMA-1: 2048, LLaMA-2: 4096)")
    g.add_argument("--vocab-dir", help="folder with a tokenizer.model to use instead of the file's vocabulary")
    args = p.parse_args(argv)
    legacy = dict(gqa=args.gqa, eps=args.eps, n_ctx=args.context_length,
                  vocab_dir=Path(args.vocab_dir) if args.vocab_dir else None)
    out = convert(args.src, args.outfile, args.outtype, args.vocab_only, args.vocab, legacy=legacy)
    print(f"wrote {out}", file=sys.stderr)
    return 0
