"""`llamacpy serve --ray`: the same OpenAI / llama.cpp HTTP API, served by engine replicas on a Ray cluster.

    routing.py        prefix hashes and the affinity rule (no Ray)
    router.py         the Ray Serve RequestRouter: prefix affinity, else the least loaded replica
    replica.py        LlamaReplica: one server ServerState + Engine per replica, streamed over Ray
    remote_engine.py  the Engine interface in the ingress, answered by replicas (retry before the first token)
    ingress.py        LlamaIngress: server.app.create_app over a RemoteEngine
    deploy.py         RayOptions, build_app, app_builder (for `serve run` config files)
    launch.py         start or join a cluster, deploy, wait for SIGTERM (`llamacpy serve --ray`)

Needs the optional extra: pip install 'llamacpy[ray]'. Importing this package does not import Ray.
"""

from __future__ import annotations


def app_builder(args: dict):
    from .deploy import app_builder as build

    return build(args)


def build_app(cfg, opts):
    from .deploy import build_app as build

    return build(cfg, opts)
