"""llamacpy: llama.cpp rebuilt in Python.

The public entry point is `llamacpy.Llama` (shaped like llama-cpp-python's class)."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so that `import llamacpy` stays cheap (no numba compilation) for the CLI and tools.
    if name == "Llama":
        from .api import Llama

        return Llama
    if name == "LlamaGrammar":
        from .grammar import LlamaGrammar

        return LlamaGrammar
    raise AttributeError(name)
