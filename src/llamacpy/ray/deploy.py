"""Building the Ray Serve application: the model deployment (replicas, autoscaling, router) and the ingress.

Owns: `RayOptions` (replica count or autoscaling bounds, per-replica CPUs, retries, router imbalance),
`build_app(cfg, opts)` -> a bound Serve application, and `app_builder(args)` -- the `import_path` of a
`serve run` / `serve deploy` config file, taking the same option names as `llamacpy serve`'s flags.
Must not: start or join a cluster (launch.py) or run requests.
"""

from __future__ import annotations

from dataclasses import dataclass

APP_NAME = "llamacpy"
MODEL_DEPLOYMENT = "LlamaReplica"
INGRESS_DEPLOYMENT = "LlamaIngress"
ROUTER_CLASS = "llamacpy.ray.router:PrefixAffinityRouter"


@dataclass
class RayOptions:
    replicas: int | None = None  # fixed count; None with min/max set: autoscaling
    min_replicas: int | None = None
    max_replicas: int | None = None
    address: str | None = None  # ray.init address (None: start a local cluster)
    num_cpus: float | None = None  # per replica (default: -t, else 1)
    retries: int = 2  # other replicas tried when a request's replica dies before it delivered anything
    imbalance: int | None = None  # queue difference that overrides prefix affinity (default: -np)
    health_check_period_s: float = 2.0
    health_check_timeout_s: float = 30.0

    def validate(self) -> None:
        from ..cli_run import UsageError

        if self.replicas is not None and (self.min_replicas is not None or self.max_replicas is not None):
            raise UsageError("--replicas cannot be combined with --min-replicas/--max-replicas")
        if self.replicas is not None and self.replicas < 1:
            raise UsageError(f"--replicas must be >= 1, got {self.replicas}")
        lo, hi = self.min_replicas, self.max_replicas
        if (lo is None) != (hi is None):
            raise UsageError("--min-replicas and --max-replicas go together")
        if lo is not None and not 0 <= lo <= hi or hi is not None and hi < 1:
            raise UsageError(f"need 0 <= --min-replicas <= --max-replicas and --max-replicas >= 1, got {lo}, {hi}")
        if self.num_cpus is not None and self.num_cpus <= 0:
            raise UsageError(f"replica CPUs must be > 0, got {self.num_cpus}")


def deployment_options(cfg, opts: RayOptions) -> dict:
    """Serve options of the model deployment."""
    from ray.serve.config import RequestRouterConfig

    n_cpus = opts.num_cpus if opts.num_cpus is not None else float(cfg.n_threads or 1)
    imbalance = opts.imbalance if opts.imbalance is not None else cfg.n_parallel
    o = dict(
        name=MODEL_DEPLOYMENT,
        ray_actor_options={"num_cpus": n_cpus},
        # a replica holds -np running + --queue-size waiting requests, so its own engine never refuses one;
        # beyond that, requests wait in Ray's router queue (bounded by --queue-size per ingress)
        max_ongoing_requests=cfg.n_parallel + max(cfg.queue_size, 0),
        max_queued_requests=max(cfg.queue_size, 1) * 4,
        health_check_period_s=opts.health_check_period_s,
        health_check_timeout_s=opts.health_check_timeout_s,
        graceful_shutdown_timeout_s=2.0,
        request_router_config=RequestRouterConfig(request_router_class=ROUTER_CLASS,
                                                  request_router_kwargs={"imbalance": imbalance}),
    )
    if opts.min_replicas is not None:
        o["autoscaling_config"] = {
            "min_replicas": opts.min_replicas, "max_replicas": opts.max_replicas,
            "initial_replicas": max(opts.min_replicas, 1),
            # scale on queue length: more replicas once requests outnumber the slots
            "target_ongoing_requests": cfg.n_parallel,
            "upscale_delay_s": 5.0, "downscale_delay_s": 60.0,
        }
    else:
        o["num_replicas"] = opts.replicas or 1
    return o


def build_app(cfg, opts: RayOptions):
    from ray import serve

    from .ingress import LlamaIngress, build_asgi_app
    from .replica import LlamaReplica

    opts.validate()
    model = serve.deployment(LlamaReplica).options(**deployment_options(cfg, opts))
    ingress = serve.deployment(serve.ingress(build_asgi_app)(LlamaIngress)).options(
        name=INGRESS_DEPLOYMENT, num_replicas=1, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=100_000,  # the gate and the replicas' queues bound the work, not the ingress
        health_check_period_s=opts.health_check_period_s)
    return ingress.bind(model.bind(cfg), cfg, opts.retries)


def app_builder(args: dict):
    """`import_path: llamacpy.ray:app_builder` with `args:` the flags of `llamacpy serve`, spelled as YAML keys:
    model, ctx_size, parallel, threads, api_key (a string or a list), replicas | min_replicas + max_replicas..."""
    from ..cli_serve import build_parser, config_from_args

    argv = args_to_argv(args)
    ns = build_parser().parse_args(argv)
    return build_app(config_from_args(ns), options_from_args(ns))


def args_to_argv(args: dict) -> list[str]:
    argv: list[str] = []
    for k, v in (args or {}).items():
        flag = "--" + str(k).replace("_", "-")
        if isinstance(v, bool):
            if v:
                argv.append(flag)
        elif isinstance(v, (list, tuple)):
            for item in v:
                argv += [flag, str(item)]
        elif v is not None:
            argv += [flag, str(v)]
    return argv


def options_from_args(ns) -> RayOptions:
    return RayOptions(replicas=getattr(ns, "replicas", None), min_replicas=getattr(ns, "min_replicas", None),
                      max_replicas=getattr(ns, "max_replicas", None), address=getattr(ns, "ray_address", None),
                      num_cpus=getattr(ns, "replica_cpus", None))
