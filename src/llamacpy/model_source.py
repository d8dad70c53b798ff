"""Where a command's model comes from: `-m FILE`, `-hf USER/REPO[:QUANT]` (+ `-hff FILE`, `-hft TOKEN`),
`-mu URL`, or -- when none is given -- the built-in demo model (stories260K, package data).

Owns: the model flags, spelled as llama.cpp spells them, added to any command's argparse parser
(`add_model_args`), and turning them into one local GGUF path (`resolve_model`), printing to stderr which
model is used when it is the demo one.
Must not: download anything itself (hub.py does) or open the GGUF (the command does).
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources

from .errors import LlamacpyError

DEMO_NAME = "stories260K.gguf"
DEMO_DESC = ("stories260K, Karpathy's 260K-parameter llama2.c TinyStories model (MIT licence, "
             "see llamacpy/data/LICENSE-llama2.c)")


class ModelSourceError(LlamacpyError):
    """Contradicting or malformed model flags."""


def demo_model_path() -> str:
    """Path of the GGUF shipped inside the package."""
    return str(resources.files("llamacpy") / "data" / DEMO_NAME)


def add_model_args(p: argparse.ArgumentParser, multiple: bool = False) -> None:
    """-m/--model, -hf/-hfr/--hf-repo, -hff/--hf-file, -hft/--hf-token, -mu/--model-url (and the --x_y
    spellings llama.cpp accepts). With `multiple`, -m may be repeated (llama-bench)."""
    g = p.add_argument_group("model (default: the built-in demo model)")
    p.set_defaults(model_multiple=multiple)
    if multiple:
        g.add_argument("-m", "--model", dest="model", action="append", default=None, metavar="FNAME",
                       help="GGUF file (repeatable; the first part of a split model)")
    else:
        g.add_argument("-m", "--model", dest="model", default=None, metavar="FNAME",
                       help="GGUF file (the first part of a split model)")
    g.add_argument("-hf", "-hfr", "--hf-repo", "--hf_repo", dest="hf_repo", default=None,
                   metavar="USER/MODEL[:QUANT]",
                   help="Hugging Face repository to download a GGUF from; QUANT picks the file (default Q4_K_M)")
    g.add_argument("-hff", "--hf-file", "--hf_file", dest="hf_file", default=None, metavar="FILE",
                   help="file in the -hf repository (overrides :QUANT)")
    g.add_argument("-hft", "--hf-token", "--hf_token", dest="hf_token", default=None, metavar="TOKEN",
                   help="Hugging Face access token (default: HF_TOKEN / the saved login)")
    g.add_argument("-mu", "--model-url", "--model_url", dest="model_url", default=None, metavar="URL",
                   help="download the model from URL (cached in LLAMA_CACHE, default ~/.cache/llamacpy)")


def resolve_model(args, log=None) -> str | list[str]:
    """The local path(s) the flags name; downloads if -hf / -mu ask for it. Returns a list when the parser
    was built with `multiple` (-m may then be repeated)."""
    log = log if log is not None else sys.stderr
    from . import compile_notice

    compile_notice.install()
    multiple = bool(getattr(args, "model_multiple", False))
    given = list(args.model or []) if multiple else ([args.model] if args.model else [])
    hf_repo, hf_file, url = args.hf_repo, args.hf_file, args.model_url
    if hf_file and not hf_repo:
        raise ModelSourceError("-hff/--hf-file needs -hf/--hf-repo USER/MODEL")
    if hf_repo and url:
        raise ModelSourceError("give either -hf/--hf-repo or -mu/--model-url, not both")
    if (hf_repo or url) and given and not multiple:
        raise ModelSourceError("give either -m/--model or a download (-hf/--hf-repo, -mu/--model-url), not both")
    if hf_repo or url:
        from . import hub

        path = hub.hf_model(hf_repo, hf_file, args.hf_token) if hf_repo else hub.url_model(url, args.hf_token)
        given.append(path)
    if not given:
        path = demo_model_path()
        print(f"llamacpy: no model given: using the built-in demo model, {DEMO_DESC}. "
              "Use -m FILE.gguf, -hf USER/REPO[:QUANT] or -mu URL for another.", file=log)
        given = [path]
    return given if multiple else given[0]
