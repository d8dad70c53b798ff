"""Tokenizer speed: vocabulary load time (beyond the GGUF open) and tokenize/detokenize throughput on ~100 KB.

Usage: python benchmarks/bench_tokenizer.py [--shared ../shared] [--kb 100]
Prints one line per measurement. Text: ../shared/golden/perplexity/tinystories.txt repeated, plus a multilingual
tail (accents, CJK, emoji, digits, code) so that byte fallback and the regex classes are exercised.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llamacpy.gguf_file import GGUFFile
from llamacpy.tokenizer import load_tokenizer

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIXED_TAIL = ("naïve café — déjà vu. 日本語のテキスト、中文文本。 emoji 🦙🔥 end\n"
              "def f(x):\n    return x ** 2  # 1234567890 3.14159\n\t\t  spaces   and\n\n\nnewlines\n")


def sample_text(shared: Path, kilobytes: int) -> bytes:
    story_file = shared / "golden" / "perplexity" / "tinystories.txt"
    base = story_file.read_bytes() if story_file.exists() else b"Once upon a time, there was a little girl. "
    chunk = base + MIXED_TAIL.encode("utf-8")
    target = kilobytes * 1024
    return (chunk * (target // len(chunk) + 1))[:target].decode("utf-8", errors="ignore").encode("utf-8")


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def bench_vocab(label: str, path: Path, text: bytes) -> None:
    gguf, t_open = timed(lambda: GGUFFile(str(path)))
    metadata, t_meta = timed(lambda: gguf.metadata)
    tok, t_load = timed(lambda: load_tokenizer(metadata, str(path)))
    print(f"{label:10s} n_vocab {tok.n_vocab:6d}: GGUF open {1e3 * (t_open + t_meta):7.1f} ms, "
          f"tokenizer load {1e3 * t_load:7.1f} ms")
    ids, t_cold = timed(lambda: tok.tokenize(text, add_bos=True))
    _, t_warm = timed(lambda: tok.tokenize(text, add_bos=True))
    _, t_special = timed(lambda: tok.tokenize(text, add_bos=True, special=True))
    _, t_detok = timed(lambda: tok.detokenize(ids))
    _, t_pieces = timed(lambda: b"".join(tok.token_to_piece(i) for i in ids))
    kb = len(text) / 1024
    print(f"{label:10s} {kb:.0f} KB -> {len(ids)} tokens: tokenize {1e3 * t_cold:7.1f} ms (first), "
          f"{1e3 * t_warm:7.1f} ms (again), {1e3 * t_special:7.1f} ms (special=True); "
          f"detokenize {1e3 * t_detok:6.1f} ms; token_to_piece loop {1e3 * t_pieces:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=PROJECT_ROOT.parent / "shared")
    parser.add_argument("--kb", type=int, default=100)
    args = parser.parse_args()
    text = sample_text(args.shared, args.kb)
    golden = args.shared / "golden" / "tokenizer"
    bench_vocab("llama3-bpe", golden / "ggml-vocab-llama-bpe.gguf", text)
    bench_vocab("llama-spm", golden / "ggml-vocab-llama-spm.gguf", text)
    bench_vocab("stories260K", args.shared / "models" / "stories260K.gguf", text)


if __name__ == "__main__":
    main()
