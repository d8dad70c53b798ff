"""The Ray Serve ingress: `llamacpy serve`'s own FastAPI application in front of the model replicas.

Owns: `IngressState` (a server.state.ServerState whose load() reads only the tokenizer and chat template from
the GGUF and asks a replica for the model facts; its engine is a RemoteEngine over the replicas) and
`LlamaIngress`, the deployment class whose ASGI app is `server.app.create_app(state)` -- the same routes, gate
(API key, body cap, 503 "Loading model"), error shapes and web page as `llamacpy serve`.
Must not: define routes (server/routes.py does) or load model weights (replicas do).
"""

from __future__ import annotations

import threading

from ..server.state import ServerState

_pending: dict = {}  # LlamaIngress.__init__ -> build_asgi_app (Ray calls the two in a row in the replica)
_pending_lock = threading.Lock()


class IngressState(ServerState):
    def __init__(self, config, model_handle, retries: int):
        super().__init__(config)
        self.model_handle = model_handle
        self.retries = retries

    def load(self) -> None:
        from ..gguf_file import GGUFFile
        from ..tokenizer import load_tokenizer
        from .remote_engine import CALL_TIMEOUT_S, RemoteEngine

        cfg = self.config
        gguf = GGUFFile(cfg.model)
        self.metadata = gguf.metadata
        self.tokenizer = load_tokenizer(gguf.metadata, cfg.model)
        self.template = self._template()
        info = self.model_handle.info.remote().result(timeout_s=max(CALL_TIMEOUT_S, 600.0))
        self.n_ctx_slot = int(info["n_ctx_slot"])
        self.model_meta = info["model_meta"]
        self.pooling = info["pooling"]
        self.engine = RemoteEngine(self.model_handle, self.tokenizer.n_vocab, cfg.n_parallel, self.n_ctx_slot,
                                   retries=self.retries)
        self.engine._store(info)
        self.log(f"ingress ready: {cfg.model} behind Ray Serve replicas")


def build_asgi_app():
    """Ray's ingress builder: the server's app around the state LlamaIngress.__init__ just made."""
    from ..server.app import create_app

    with _pending_lock:
        state = _pending.pop("state")
    return create_app(state)


class LlamaIngress:
    """Wrapped by deploy.build_app as serve.deployment(serve.ingress(build_asgi_app)(LlamaIngress))."""

    def __init__(self, model_handle, cfg, retries: int = 2):
        self.state = IngressState(cfg, model_handle, retries)
        with _pending_lock:
            _pending["state"] = self.state
        self.state.start_loading()  # routes answer 503 "Loading model" until a replica has answered

    def check_health(self):
        if self.state.status == "failed":
            raise RuntimeError(f"ingress failed to start: {self.state.error}")

    def __del__(self):
        try:
            self.state.shutdown(timeout=1.0)
        except Exception:
            pass
