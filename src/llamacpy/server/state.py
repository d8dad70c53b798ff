"""What the server knows: its settings, and the model/tokenizer/engine once loaded (in a background thread).

Owns: `ServerConfig` (everything `llamacpy serve`'s flags set), `ServerState` (loading -> ready | failed,
shutting down), loading the GGUF, tokenizer, chat template and engine off the event loop, and the model
facts routes report (/props, /v1/models meta).
Must not: parse flags (cli_serve.py) or build HTTP responses (routes.py).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field

from ..sampling import SamplingParams

DEFAULT_MAX_BODY = 8 << 20  # bytes; larger bodies get 413 (a 128k-token prompt is well under 1 MB of text)


@dataclass
class ServerConfig:
    model: str
    # -hf / -hff / -hft / -mu as given (None for -m): a Ray replica on another node downloads into its own cache
    model_source: dict | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    alias: str | None = None
    n_ctx: int = 4096  # total, split evenly over the slots (0: the model's training context)
    n_parallel: int = 1
    n_threads: int | None = None
    n_batch: int = 2048
    queue_size: int = 64
    api_keys: list[str] = field(default_factory=list)
    chat_template: str | None = None
    jinja: bool = False
    context_shift: bool = True
    endpoint_metrics: bool = False
    endpoint_slots: bool = True
    endpoint_props: bool = False
    embedding: bool = False
    timeout: float = 600.0  # seconds a request may wait for its next token before it is cancelled
    n_predict: int = -1
    n_keep: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    threads_http: int = -1
    max_body: int = DEFAULT_MAX_BODY
    webui: bool = True
    verbose: bool = False

    @property
    def model_name(self) -> str:
        return self.alias or self.model


class ServerState:
    """Shared by all routes. `status` is "loading" until `load()` finishes, then "ready" (or "failed")."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.status = "loading"
        self.error: str | None = None
        self.shutting_down = False
        self.t_start = int(time.time())
        self.engine = None
        self.tokenizer = None
        self.template = None
        self.metadata: dict = {}
        self.model_meta: dict = {}
        self.n_ctx_slot = 0
        self.pooling = "mean"
        self.ready_event = threading.Event()
        self._shutdown_lock = threading.Lock()
        self.on_load_failed = None  # called (on the loading thread) when the model cannot be loaded
        self._shut = False

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def log(self, msg: str) -> None:
        print(f"llamacpy serve: {msg}", file=sys.stderr, flush=True)

    # -- loading ----------------------------------------------------------------------------------------
    def start_loading(self) -> threading.Thread:
        t = threading.Thread(target=self._load_guarded, name="llamacpy-load", daemon=True)
        t.start()
        return t

    def _load_guarded(self) -> None:
        try:
            delay = float(os.environ.get("LLAMACPY_SERVE_LOAD_DELAY", "0") or 0)  # tests observe "Loading model"
            if delay > 0:
                time.sleep(delay)
            self.load()
            if self.shutting_down:
                return
            self.status = "ready"
            self.log(f"model loaded, {self.config.n_parallel} slot(s) of {self.n_ctx_slot} tokens; ready")
        except Exception as e:  # a bad file or flag: the server answers 500 with the reason, and logs it
            from ..errors import LlamacpyError

            self.error = str(e) if isinstance(e, LlamacpyError) else f"{type(e).__name__}: {e}"
            self.status = "failed"
            if self.on_load_failed is not None:
                self.on_load_failed()
        finally:
            self.ready_event.set()

    def load(self) -> None:
        from ..gguf_file import GGUFFile
        from ..tokenizer import load_tokenizer
        from .engine_factory import build_engine

        cfg = self.config
        t0 = time.perf_counter()
        gguf = GGUFFile(cfg.model)
        self.metadata = gguf.metadata
        self.tokenizer = load_tokenizer(gguf.metadata, cfg.model)
        self.template = self._template()
        self.engine, model, self.n_ctx_slot = build_engine(gguf, self.tokenizer, cfg)
        self.pooling = _pooling_name(gguf.metadata)
        mcfg = model.cfg
        self.model_meta = {
            "vocab_type": 1 if self.tokenizer.model_name == "llama" else 2,  # llama.cpp's LLAMA_VOCAB_TYPE_SPM/BPE
            "n_vocab": self.tokenizer.n_vocab,
            "n_ctx_train": mcfg.n_ctx_train,
            "n_embd": mcfg.n_embd,
            "n_params": int(getattr(model, "n_params", 0)),
            "size": int(getattr(model, "file_size", 0)),
        }
        self.log(f"loaded {cfg.model} in {time.perf_counter() - t0:.2f} s")

    def _template(self):
        from ..chat import ChatTemplateError, template_for_model

        cfg = self.config
        try:
            t = template_for_model(self.metadata, self.tokenizer, name=cfg.chat_template, use_jinja=cfg.jinja,
                                   fallback="chatml")
            t.apply([{"role": "user", "content": "test"}])
            return t
        except ChatTemplateError as e:
            if cfg.chat_template:
                raise
            self.log(f"the model's chat template cannot be used ({e}); falling back to chatml")
            return template_for_model({}, self.tokenizer, name="chatml")

    def template_source(self) -> str:
        t = self.template
        if t is None:
            return ""
        return t.source if t.source is not None else t.builtin

    def token_piece(self, token_id: int | None) -> str:
        if token_id is None or self.tokenizer is None:
            return ""
        return self.tokenizer.token_to_piece(token_id, special=True).decode("utf-8", errors="replace")

    # -- shutdown ----------------------------------------------------------------------------------------
    def shutdown(self, timeout: float = 1.0) -> None:
        """Cancel every request and stop the engine; safe to call from several threads (the first one acts)."""
        with self._shutdown_lock:
            if self._shut:
                return
            self._shut = True
        self.shutting_down = True
        engine = self.engine
        if engine is not None:
            try:
                engine.shutdown(timeout=timeout)
            except Exception as e:  # never let a failing engine block the exit
                self.log(f"engine shutdown: {type(e).__name__}: {e}")


POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


def _pooling_name(metadata: dict) -> str:
    arch = metadata.get("general.architecture", "llama")
    value = metadata.get(f"{arch}.pooling_type")
    return POOLING_NAMES.get(value, "mean") if isinstance(value, int) else "mean"
