"""`llamacpy serve --ray`: start (or join, with --ray-address) a Ray cluster, deploy the app, serve until a signal.

Owns: ray.init, Serve's HTTP options (--host/--port, one proxy on the head node), deploying build_app's
application under the name "llamacpy", and on SIGTERM / Ctrl-C deleting it again (and shutting down the local
cluster when we started it).
Must not: build deployments (deploy.py) or answer requests.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from .deploy import APP_NAME, RayOptions, build_app


def _log(msg: str) -> None:
    print(f"llamacpy serve --ray: {msg}", file=sys.stderr, flush=True)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_ray(cfg, opts: RayOptions) -> int:
    from ..cli_run import UsageError
    from ..errors import LlamacpyError

    opts.validate()
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UsageError("--ray needs Ray Serve: pip install 'llamacpy[ray]'") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    port = cfg.port or _free_port(cfg.host)
    started_here = opts.address is None
    try:
        ray.init(address=opts.address, include_dashboard=False if started_here else None, logging_level="WARNING",
                 log_to_driver=cfg.verbose)
    except Exception as e:  # unreachable cluster, wrong auth token, ...: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        where = f"the Ray cluster at {opts.address}" if opts.address else "a local Ray instance"
        raise LlamacpyError(f"--ray-address: cannot connect to {where}: {type(e).__name__}: {first}") from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": cfg.host, "port": port}, proxy_location="HeadOnly")
        try:
            serve.run(build_app(cfg, opts), name=APP_NAME, route_prefix="/", blocking=False)
        except Exception as e:  # e.g. every replica failed to load the model: one line, not Ray's traceback
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise LlamacpyError(f"--ray: deploying {cfg.model} failed: {type(e).__name__}: {first}") from None
        _log(f"HTTP server is listening, hostname: {cfg.host}, port: {port}")
        while not stop.wait(0.5):
            pass
        _log("shutting down")
        return 0
    finally:
        try:
            serve.delete(APP_NAME)
            if started_here or not serve.status().applications:
                serve.shutdown()
        except Exception as e:
            _log(f"shutdown: {type(e).__name__}: {e}")
        ray.shutdown()
