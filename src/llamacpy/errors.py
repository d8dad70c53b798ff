"""Exception types: every error a user can cause maps to one of these, with a message naming the culprit."""


class LlamacpyError(Exception):
    """Base class for errors caused by bad input (files, flags, keys), reported as one clear line."""

    def __str__(self) -> str:
        # one line, whatever a damaged file put into a name we quote (a newline in a zip member name, ...)
        return super().__str__().replace("\r", "\\r").replace("\n", "\\n")


class GGUFError(LlamacpyError, ValueError):
    """The file is missing, not GGUF, truncated, or structurally invalid."""


class ModelError(LlamacpyError, ValueError):
    """The GGUF is valid but not a model we can run (architecture, missing key/tensor, tensor type)."""


class ContextError(LlamacpyError, ValueError):
    """Tokens do not fit the context window."""


class TokenizerError(LlamacpyError, ValueError):
    """The vocabulary in the metadata is missing or unusable."""


class GrammarError(LlamacpyError, ValueError):
    """A GBNF grammar or JSON schema is invalid or unsatisfiable."""
