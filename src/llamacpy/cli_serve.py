"""`llamacpy serve`: llama.cpp's llama-server -- an OpenAI- and llama.cpp-compatible HTTP server.

Owns: the argument parser (llama-server's flag spellings and defaults), validating flags (one clear line each),
reading --api-key-file, and running uvicorn: the socket listens first, then the model loads in the background
(every route answers 503 "Loading model" meanwhile); SIGTERM / Ctrl-C cancel running requests (streams get a
final event) and the process exits within a second or two.
Must not: implement routes (server/), or the engine.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from .cli_run import UsageError, _alias, _Parser, add_sampling_args, sampling_params
from .errors import LlamacpyError
from .model_source import add_model_args, resolve_model
from .sampling import SamplingParams


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llamacpy serve", description="Serve a GGUF model over HTTP (llama-server's API and "
                "the OpenAI API).", allow_abbrev=False)
    add_model_args(p)  # -m / -hf / -hff / -hft / -mu, as every command (default: the built-in demo model)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0 = any free port)")
    p.add_argument(*_alias("-a", "--alias"), dest="alias", default=None, help="model name reported by the API")
    p.add_argument(*_alias("-c", "--ctx-size"), dest="ctx_size", type=int, default=4096,
                   help="total context, split evenly over the slots (0 = the model's training context)")
    p.add_argument(*_alias("-np", "--parallel"), dest="parallel", type=int, default=1,
                   help="number of slots (requests decoded together)")
    p.add_argument(*_alias("-t", "--threads"), dest="threads", type=int, default=None,
                   help="threads for the model (default: physical cores)")
    p.add_argument(*_alias("-b", "--batch-size"), dest="batch_size", type=int, default=2048,
                   help="prompt tokens evaluated per step")
    p.add_argument(*_alias("-ub", "--ubatch-size"), dest="ubatch_size", type=int, default=512,
                   help="accepted for compatibility")
    p.add_argument(*_alias("--queue-size"), dest="queue_size", type=int, default=64,
                   help="requests waiting for a slot before new ones get 503 (default 64)")
    p.add_argument(*_alias("--api-key"), dest="api_key", action="append", default=[],
                   help="API key clients must send as `Authorization: Bearer KEY` (repeatable)")
    p.add_argument(*_alias("--api-key-file"), dest="api_key_file", default=None,
                   help="file with one API key per line")
    p.add_argument(*_alias("--chat-template"), dest="chat_template", default=None,
                   help="built-in template name or Jinja text (default: the model's, else chatml)")
    p.add_argument(*_alias("--chat-template-file"), dest="chat_template_file", default=None,
                   help="file holding a Jinja chat template")
    p.add_argument("--jinja", dest="jinja", action="store_true", default=False,
                   help="render the model's Jinja template (default: its matching built-in, as llama-server)")
    p.add_argument(*_alias("--no-context-shift"), dest="no_context_shift", action="store_true",
                   help="a prompt that does not fit gets 400 and generation stops at the context limit")
    p.add_argument("--metrics", action="store_true", help="enable the Prometheus /metrics endpoint")
    p.add_argument("--slots", dest="slots", action="store_true", default=True, help="enable /slots (default)")
    p.add_argument(*_alias("--no-slots"), dest="slots", action="store_false", help="disable /slots")
    p.add_argument("--props", action="store_true", help="allow changing global properties via POST /props")
    p.add_argument(*_alias("--embedding", "--embeddings"), dest="embedding", action="store_true",
                   help="embeddings only: /embedding and /v1/embeddings; completions answer 501 (llama-server)")
    p.add_argument(*_alias("-to", "--timeout"), dest="timeout", type=float, default=600,
                   help="seconds a request may wait for its next token before it is cancelled (default 600)")
    p.add_argument(*_alias("--threads-http"), dest="threads_http", type=int, default=-1,
                   help="worker threads for tokenization and other blocking work (default: anyio's 40)")
    p.add_argument(*_alias("--max-body"), dest="max_body", type=int, default=None,
                   help="largest request body in bytes (default 8 MiB); larger ones get 413")
    p.add_argument(*_alias("--no-webui"), dest="webui", action="store_false", default=True,
                   help="do not serve the web page at /")
    p.add_argument("-v", *_alias("--verbose", "--log-verbose"), dest="verbose", action="store_true",
                   help="log every request")
    g = p.add_argument_group("generation defaults (each request may override them)")
    g.add_argument(*_alias("-n", "--n-predict"), dest="n_predict", type=int, default=-1,
                   help="tokens to generate per request (-1 = until EOS or the context limit)")
    g.add_argument("--keep", type=int, default=0, help="prompt tokens kept when a slot's context shifts")
    add_sampling_args(p)  # every llama-cli sampler and grammar flag, as the requests' defaults
    r = p.add_argument_group("Ray Serve (pip install 'llamacpy[ray]')")
    r.add_argument("--ray", action="store_true", help="serve through replicas on a Ray cluster")
    r.add_argument("--replicas", type=int, default=None, help="number of model replicas (default 1)")
    r.add_argument("--min-replicas", dest="min_replicas", type=int, default=None, help="autoscale from this many")
    r.add_argument("--max-replicas", dest="max_replicas", type=int, default=None, help="autoscale up to this many")
    r.add_argument("--ray-address", dest="ray_address", default=None,
                   help="join this Ray cluster (e.g. auto or HOST:6379; default: start a local one)")
    r.add_argument("--replica-cpus", dest="replica_cpus", type=float, default=None,
                   help="Ray CPUs per replica (default: -t, else 1)")
    return p


def read_api_keys(args) -> list[str]:
    keys = [k for k in args.api_key if k]
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                keys += [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise UsageError(f"cannot read --api-key-file {args.api_key_file!r}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--api-key-file {args.api_key_file!r} is not valid UTF-8") from None
    return keys


def sampling_defaults(args) -> SamplingParams:
    params = sampling_params(args)
    try:
        params.validate()
    except ValueError as e:
        raise UsageError(str(e)) from None
    return params


def config_from_args(args):
    from .server.state import DEFAULT_MAX_BODY, ServerConfig

    args.model = resolve_model(args)  # a -hf / -mu model is downloaded (into the hub's cache) before listening
    if not os.path.isfile(args.model):
        raise UsageError(f"-m/--model: no such file {args.model!r}")
    checks = [(args.parallel >= 1, f"-np/--parallel must be >= 1, got {args.parallel}"),
              (args.ctx_size >= 0, f"-c/--ctx-size must be >= 0, got {args.ctx_size}"),
              (args.batch_size >= 1, f"-b/--batch-size must be >= 1, got {args.batch_size}"),
              (args.threads is None or args.threads >= 1, f"-t/--threads must be positive, got {args.threads}"),
              (0 <= args.port <= 65535, f"--port must be in 0..65535, got {args.port}"),
              (args.timeout > 0, f"-to/--timeout must be > 0, got {args.timeout}"),
              (args.queue_size >= 0, f"--queue-size must be >= 0, got {args.queue_size}"),
              (args.n_predict >= -1, f"-n/--n-predict must be >= -1, got {args.n_predict}"),
              (args.keep >= -1, f"--keep must be -1 or >= 0, got {args.keep}"),
              (args.max_body is None or args.max_body > 0, f"--max-body must be > 0, got {args.max_body}")]
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)
    template = args.chat_template
    if args.chat_template_file:
        try:
            with open(args.chat_template_file, encoding="utf-8") as f:
                template = f.read()
        except OSError as e:
            raise UsageError(f"cannot read --chat-template-file {args.chat_template_file!r}: {e.strerror}") from None
    source = {k: getattr(args, k) for k in ("hf_repo", "hf_file", "hf_token", "model_url")}
    return ServerConfig(
        model=args.model, model_source=source if (args.hf_repo or args.model_url) else None,
        host=args.host, port=args.port, alias=args.alias, n_ctx=args.ctx_size,
        n_parallel=args.parallel, n_threads=args.threads, n_batch=args.batch_size, queue_size=args.queue_size,
        api_keys=read_api_keys(args), chat_template=template, jinja=args.jinja or bool(args.chat_template_file),
        context_shift=not args.no_context_shift, endpoint_metrics=args.metrics, endpoint_slots=args.slots,
        endpoint_props=args.props, embedding=args.embedding, timeout=args.timeout, n_predict=args.n_predict,
        n_keep=args.keep, sampling=sampling_defaults(args), threads_http=args.threads_http,
        max_body=args.max_body or DEFAULT_MAX_BODY, webui=args.webui, verbose=args.verbose,
    )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    ray_flags = (args.replicas, args.min_replicas, args.max_replicas, args.ray_address, args.replica_cpus)
    if args.ray:
        from .ray.deploy import options_from_args
        from .ray.launch import serve_ray

        return serve_ray(cfg, options_from_args(args))
    if any(v is not None for v in ray_flags):
        raise UsageError("--replicas, --min-replicas, --max-replicas, --ray-address and --replica-cpus need --ray")
    return serve(cfg)


def serve(cfg) -> int:
    import uvicorn

    from .server.app import create_app
    from .server.state import ServerState

    state = ServerState(cfg)
    app = create_app(state)
    uv_config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info" if cfg.verbose else "warning",
                               access_log=cfg.verbose, lifespan="off", timeout_graceful_shutdown=1,
                               timeout_keep_alive=5, backlog=2048)
    server = _Server(uv_config, state)

    def load_failed():  # llama-server exits when the model does not load; so do we, with the reason
        server.should_exit = True

    state.on_load_failed = load_failed
    server.run()
    state.shutdown(timeout=1.0)
    if state.status == "failed":
        raise ServeError(f"cannot load {cfg.model}: {state.error}")
    return 0


class ServeError(LlamacpyError):
    pass


class _Server:
    """uvicorn.Server with: the model load started once the socket listens; a signal cancelling every request
    at once (so streams end with a final event instead of holding the shutdown); exit status 0 on SIGTERM."""

    def __new__(cls, config, state):
        import uvicorn

        class Server(uvicorn.Server):
            exit_requested = False

            async def startup(self, sockets=None):
                await super().startup(sockets=sockets)
                if self.should_exit:
                    return
                threads_limit(state.config.threads_http)
                for s in self.servers:
                    for sock in s.sockets:
                        host, port = sock.getsockname()[:2]
                        state.log(f"HTTP server is listening, hostname: {host}, port: {port}")
                state.start_loading()

            def handle_exit(self, sig, frame):
                self.exit_requested = True
                if self.should_exit:  # a second signal: stop now
                    self.force_exit = True
                    return
                self.should_exit = True
                state.log("shutting down: cancelling running requests")
                threading.Thread(target=state.shutdown, kwargs={"timeout": 1.0}, daemon=True).start()

        return Server(config)


def threads_limit(n: int) -> bool:
    """--threads-http: the size of the worker pool blocking work (tokenizing, embeddings) runs on."""
    if n is None or n < 1:
        return False
    import anyio.to_thread

    anyio.to_thread.current_default_thread_limiter().total_tokens = n
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
