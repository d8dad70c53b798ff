"""Building the engine for `llamacpy serve`: the model with one KV sequence per slot, and the slot context.

Owns: the llama-server rule for slot context (-c is the total, split evenly over -np slots; -c 0 = the model's
training context as the total) and the `Engine(...)` call.
Must not: do HTTP, or run the model itself.
"""

from __future__ import annotations

from ..errors import LlamacpyError


class ServeConfigError(LlamacpyError):
    pass


def slot_context(n_ctx_total: int, n_parallel: int, n_ctx_train: int) -> tuple[int, int]:
    """llama-server: n_ctx 0 means the training context; each slot gets n_ctx / n_parallel."""
    total = n_ctx_total if n_ctx_total > 0 else n_ctx_train
    per_slot = total // n_parallel
    if per_slot < 8:
        raise ServeConfigError(f"-c {total} split over -np {n_parallel} slots leaves {per_slot} tokens per slot"
                               " (need at least 8)")
    return total, per_slot


def build_engine(gguf, tokenizer, cfg):
    """-> (engine, model, n_ctx_slot)."""
    from ..config import LlamaConfig
    from ..engine import Engine
    from ..model import LlamaModel

    mcfg = LlamaConfig.from_metadata(gguf.metadata, gguf.path)
    total, per_slot = slot_context(cfg.n_ctx, cfg.n_parallel, mcfg.n_ctx_train)
    model = LlamaModel(gguf, n_ctx=per_slot, n_threads=cfg.n_threads, n_seq=1)  # the engine sizes the KV cache
    engine = Engine(model, tokenizer, n_slots=cfg.n_parallel, n_batch=cfg.n_batch, queue_size=cfg.queue_size,
                    n_ctx_slot=per_slot)
    return engine, model, per_slot
