"""`llamacpy serve --ray`: prefix-affinity rules (fast, no Ray), and -- marked slow + ray -- a real two-node Ray
cluster on loopback serving stories260K through 2 replicas, talked to with the official `openai` client.

The cluster test: 40 concurrent requests (half streamed) all answered, both replicas used, answers at
temperature 0 equal to a single `llamacpy serve`'s; a repeated prefix goes back to the replica holding it (its
prompt is served from that slot's cache); the API key is checked; one replica's process is SIGKILLed mid-load:
every request is answered (equal to the reference) or fails with a clean HTTP/SSE error, Ray starts a new
replica and the endpoint keeps answering; per-replica series appear in Ray's Prometheus export; then an
autoscaling deployment (1..2 replicas of 1 slot) grows to 2 replicas under 8 concurrent clients; `ray stop
--force` in a finally, then no Ray process is left. Each wait has a deadline, so the test stops itself.
Run: python -m pytest -q -m ray tests/test_ray.py
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from llamacpy.ray.routing import AffinityTable, prefer, prefix_key
from shared import PROJECT_ROOT, models_dir

IN_CI = os.environ.get("CI", "").lower() == "true"
API_KEY = "test-key-14"


# -- prefix affinity: pure functions ------------------------------------------------------------------------------
def test_prefix_key_chains_blocks():
    a = list(range(40))
    b = list(range(32)) + [99] * 8
    ka, kb = prefix_key(a, block=16), prefix_key(b, block=16)
    assert len(ka) == 2 and len(kb) == 2  # only complete blocks
    assert ka == kb  # the first 32 tokens agree
    c = [7] + list(range(1, 40))
    kc = prefix_key(c, block=16)
    assert kc[0] != ka[0] and kc[1] != ka[1]  # a change in block 0 changes every later hash (chained)
    assert prefix_key(list(range(15)), block=16) == []


def test_affinity_prefers_holder_unless_overloaded():
    t = AffinityTable(size=100)
    key = prefix_key(list(range(64)), block=16)  # 4 blocks
    t.record("r1", key[:2])
    t.record("r2", key)
    assert t.match("r1", key) == 2 and t.match("r2", key) == 4
    assert prefer(t, key, ["r1", "r2", "r3"], {}, imbalance=2) == "r2"
    assert prefer(t, key, ["r1", "r2", "r3"], {"r2": 3, "r3": 1}, imbalance=2) == "r2"  # 3 - 1 <= 2
    assert prefer(t, key, ["r1", "r2", "r3"], {"r2": 4, "r3": 1}, imbalance=2) is None  # overloaded: least loaded
    assert prefer(t, key, ["r1", "r3"], {}, imbalance=2) == "r1"  # the holder gone: the next best
    assert prefer(t, prefix_key([5] * 64), ["r1", "r2"], {}, imbalance=2) is None  # nobody holds it
    t.keep_only(["r1"])
    assert t.match("r2", key) == 0


def test_affinity_table_is_bounded():
    t = AffinityTable(size=8)
    for i in range(20):
        t.record("r", [i])
    assert len(t.tables["r"]) == 8 and t.match("r", [19]) == 1 and t.match("r", [0]) == 0


def test_ray_flags_need_ray_and_are_checked():
    from llamacpy.cli_run import UsageError
    from llamacpy.cli_serve import main
    from llamacpy.ray.deploy import RayOptions, args_to_argv

    model = str(models_dir() / "stories260K.gguf")
    with pytest.raises(UsageError, match="need --ray"):
        main(["-m", model, "--replicas", "2"])
    for bad in (RayOptions(replicas=0), RayOptions(replicas=2, min_replicas=1, max_replicas=2),
                RayOptions(min_replicas=1), RayOptions(min_replicas=3, max_replicas=2)):
        with pytest.raises(UsageError):
            bad.validate()
    RayOptions(min_replicas=0, max_replicas=2).validate()
    assert args_to_argv({"model": "m.gguf", "ctx_size": 512, "metrics": True, "jinja": False,
                         "api_key": ["a", "b"]}) == ["--model", "m.gguf", "--ctx-size", "512", "--metrics",
                                                     "--api-key", "a", "--api-key", "b"]


def test_serve_run_config_example_builds(tmp_path):
    """docs/ray-serve.yaml's `args` go through `llamacpy serve`'s own parser into the deployment options.
    (In the default run: skips without the extra even under CI; the cluster test below is the one CI requires.)"""
    try:
        import yaml
        from ray import serve  # noqa: F401
    except ImportError:
        pytest.skip("ray[serve] is not installed (pip install 'llamacpy[ray]')")
    from llamacpy.cli_serve import build_parser, config_from_args
    from llamacpy.ray import app_builder
    from llamacpy.ray.deploy import ROUTER_CLASS, args_to_argv, deployment_options, options_from_args

    doc = yaml.safe_load((PROJECT_ROOT / "docs" / "ray-serve.yaml").read_text())
    (app,) = doc["applications"]
    assert app["import_path"] == "llamacpy.ray:app_builder"
    keys = tmp_path / "keys.txt"
    keys.write_text("k1\n")
    args = dict(app["args"], model=str(models_dir() / "stories260K.gguf"), api_key_file=str(keys))
    assert app_builder(args) is not None
    ns = build_parser().parse_args(args_to_argv(args))
    cfg, opts = config_from_args(ns), options_from_args(ns)
    assert cfg.api_keys == ["k1"] and cfg.n_parallel == 4 and cfg.endpoint_metrics
    o = deployment_options(cfg, opts)
    assert o["autoscaling_config"]["min_replicas"] == 1 and o["autoscaling_config"]["max_replicas"] == 4
    assert o["autoscaling_config"]["target_ongoing_requests"] == 4  # queue length per replica: -np
    assert o["ray_actor_options"]["num_cpus"] == 4.0  # -t
    assert o["request_router_config"].request_router_class == ROUTER_CLASS
    fixed = deployment_options(cfg, options_from_args(build_parser().parse_args(
        ["-m", args["model"], "--ray", "--replicas", "3"])))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed


class _FakeStream:
    """A DeploymentResponseGenerator stand-in: yields `items`; an exception item is raised there."""

    def __init__(self, items):
        self.items = items
        self.cancelled = False

    def __iter__(self):
        for it in self.items:
            if isinstance(it, BaseException):
                raise it
            yield it

    def cancel(self):
        self.cancelled = True


class _FakeHandle:
    """DeploymentHandle stand-in for RemoteEngine: each generate call takes the next scripted stream."""

    def __init__(self, scripts):
        self.scripts = list(scripts)
        self.calls = []
        self.generate = self

    def options(self, **kw):
        return self

    def remote(self, req, route_key=None):
        self.calls.append(route_key)
        return _FakeStream(self.scripts.pop(0))


def _events(texts, final="stop"):
    from llamacpy.engine import TokenEvent

    return [TokenEvent(token=i, text=t) for i, t in enumerate(texts)] + [TokenEvent(None, "", finish_reason=final)]


def test_remote_engine_retries_only_before_anything_was_delivered():
    E = pytest.importorskip("ray.exceptions")
    from llamacpy.engine import CompletionRequest
    from llamacpy.ray.remote_engine import RemoteEngine

    accepted = {"accepted": {"replica": "r1", "pid": 1, "host": "h"}}
    # the first replica dies before its first token: the request goes to another replica, the client sees nothing
    h = _FakeHandle([[accepted, E.ActorDiedError()], [dict(accepted, accepted={"replica": "r2"}), _events("ab")]])
    eng = RemoteEngine(h, n_vocab=100, n_slots=2, n_ctx_slot=64)
    evs = list(eng.submit(CompletionRequest(prompt_tokens=list(range(40)))))
    assert [e.text for e in evs] == ["a", "b", ""] and evs[-1].finish_reason == "stop" and len(h.calls) == 2
    assert h.calls[0] == prefix_key(list(range(40)))  # the routing key travels with every attempt
    assert eng.replica_table()["r2"]["served"] == 1 and "r1" not in eng.replica_table()
    # the replica dies after a token was delivered: no retry (the client already has output), an error final event
    h = _FakeHandle([[accepted, _events("a")[:1], E.ActorDiedError()], [accepted, _events("zz")]])
    eng = RemoteEngine(h, n_vocab=100, n_slots=2, n_ctx_slot=64)
    evs = list(eng.submit(CompletionRequest(prompt_tokens=[1, 2, 3])))
    assert [e.text for e in evs[:-1]] == ["a"] and evs[-1].finish_reason == "error" and "lost" in evs[-1].error
    assert len(h.calls) == 1
    # every attempt dies: an error final event after 1 + retries attempts
    h = _FakeHandle([[E.ActorDiedError()]] * 3)
    evs = list(RemoteEngine(h, 100, 2, 64, retries=2).submit(CompletionRequest(prompt_tokens=[1])))
    assert evs[-1].finish_reason == "error" and len(h.calls) == 3
    # on_event (as the server submits): a refusal by the replica's engine becomes the final error event
    got = []
    h = _FakeHandle([[{"refused": "busy", "message": "all 2 slots are busy"}]])
    r = RemoteEngine(h, 100, 2, 64).submit(CompletionRequest(prompt_tokens=[1]), on_event=got.append)
    _wait(lambda: got, 10, "the refusal event", 0.05)
    assert got[-1].finish_reason == "error" and "busy" in got[-1].error and r.done
    assert r.wait_admitted(10).code == 503  # what the server answers with (test below)


def test_busy_replica_is_a_503_for_the_client():
    """The server's own request path over a RemoteEngine whose replica refuses (its queue is full): the client
    gets llama-server's 503 shape, plain and streamed, not a 500 or a 200 stream carrying an error."""
    import asyncio
    from types import SimpleNamespace

    from llamacpy.ray.remote_engine import RemoteEngine
    from llamacpy.sampling import SamplingParams
    from llamacpy.server import generate as G
    from llamacpy.server.errors import APIError

    refused = [{"refused": "busy", "message": "all 2 slots are busy and 4 requests are waiting"}]
    accepted = [{"accepted": {"replica": "r1"}}, _events("ab")]
    eng = RemoteEngine(_FakeHandle([refused, refused, accepted]), 100, 2, 64)
    state = SimpleNamespace(shutting_down=False, n_ctx_slot=64, engine=eng,
                            config=SimpleNamespace(context_shift=True, timeout=30))

    def job():
        return G.Job(prompt_tokens=[1, 2], n_predict=2, params=SamplingParams(temp=0), stop=[])

    async def receive():
        await asyncio.sleep(3600)

    async def no_chunks(bridge, c):
        yield b""

    async def run():
        for call in (lambda: G.collect(state, SimpleNamespace(receive=receive), [job()]),
                     lambda: G.stream(state, job(), no_chunks)):
            with pytest.raises(APIError) as e:
                await call()
            assert e.value.code == 503 and e.value.body()["error"]["type"] == "unavailable_error"
            assert "busy" in e.value.message
        (c,) = await G.collect(state, SimpleNamespace(receive=receive), [job()])  # accepted: runs as before
        return c

    c = asyncio.run(run())
    assert c.text == "ab" and c.finish == "stop"


def test_remote_engine_validates_like_the_engine():
    from llamacpy.engine import CompletionRequest, InvalidRequest
    from llamacpy.errors import ContextError
    from llamacpy.ray.remote_engine import RemoteEngine

    eng = RemoteEngine(_FakeHandle([]), n_vocab=100, n_slots=2, n_ctx_slot=8)
    for req, err in ((CompletionRequest(prompt_tokens=[]), InvalidRequest),
                     (CompletionRequest(prompt_tokens=[100]), InvalidRequest),
                     (CompletionRequest(prompt_tokens=[1], id_slot=2), InvalidRequest),
                     (CompletionRequest(prompt_tokens=list(range(8)), context_shift=False), ContextError)):
        with pytest.raises(err):
            eng.submit(req)


# -- the cluster -----------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Ray >= 2.5x: token authentication, one token for every process of this cluster (without it, a token that
# a local ray.init() once left in ~/.ray turns auth on for `ray start --head` only, and the second node fails)
RAY_TOKEN = secrets.token_hex(32)


def _env() -> dict:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=RAY_TOKEN)
    src = str(PROJECT_ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _ray_bin() -> str:
    return os.path.join(os.path.dirname(sys.executable), "ray")


def _ray_processes() -> list[int]:
    """Processes of a Ray runtime: workers/actors (titled ray::...), raylet, gcs_server, Ray's python daemons."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read()
        except OSError:
            continue
        if cmd.startswith(b"ray::") or b"/ray/core/src/ray/" in cmd or b"site-packages/ray/" in cmd:
            out.append(int(d))
    return out


def _replica_pids() -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read()
            except OSError:
                continue
            if cmd.startswith(b"ray::ServeReplica:llamacpy:LlamaReplica"):
                out.append(int(d))
    return sorted(out)


def _wait(pred, timeout: float, what: str, step: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _healthy(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _start_server(args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llamacpy", "serve", *args], env=_env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


PROMPTS = [f"Once upon a time, there was a {w}" for w in
           ("cat", "dog", "girl", "boy", "bird", "tree", "frog", "king", "ball", "car")]
CHATS = [f"Tell me about the {w}." for w in ("sun", "moon", "sea", "park", "cake", "bear", "fish", "toy", "hat", "box")]
N_TOK = 32


def _ask(client, kind: str, i: int, n_tok: int = N_TOK, prompts=PROMPTS, chats=CHATS) -> str:
    """One request; kind in completion | completion_stream | chat | chat_stream."""
    if kind.startswith("chat"):
        msgs = [{"role": "user", "content": chats[i % len(chats)]}]
        if kind.endswith("stream"):
            s = client.chat.completions.create(model="m", messages=msgs, max_tokens=n_tok, temperature=0,
                                               stream=True)
            return "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)
        return client.chat.completions.create(model="m", messages=msgs, max_tokens=n_tok,
                                              temperature=0).choices[0].message.content
    p = prompts[i % len(prompts)]
    if kind.endswith("stream"):
        s = client.completions.create(model="m", prompt=p, max_tokens=n_tok, temperature=0, stream=True)
        return "".join(ch.choices[0].text for ch in s if ch.choices)
    return client.completions.create(model="m", prompt=p, max_tokens=n_tok, temperature=0).choices[0].text


KINDS = ("completion", "completion_stream", "chat", "chat_stream")


def _jobs(n: int):
    return [(KINDS[i % 4], (i // 4) % 10) for i in range(n)]


def _exported(m1: int, m2: int, name: str) -> set:
    """Replica tags whose `name` series is > 0 in Ray's Prometheus export of either node."""
    import httpx

    tags = set()
    for port in (m1, m2):
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        except httpx.HTTPError:
            continue
        for line in text.splitlines():
            if line.startswith(name + "{") and 'replica="' in line and float(line.rsplit(" ", 1)[1]) > 0:
                tags.add(line.split('replica="', 1)[1].split('"', 1)[0])
    return tags


@pytest.mark.slow
@pytest.mark.ray
def test_two_node_cluster_replicas_failover(tmp_path):
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("ray[serve] is not installed (pip install -e '.[ray,test]') -- required under CI")
        pytest.skip("ray[serve] is not installed (pip install 'llamacpy[ray]')")
    import httpx
    import openai

    model = str(models_dir() / "stories260K.gguf")
    common = ["-m", model, "-np", "2", "-c", "1024", "-t", "1"]
    temp = tempfile.mkdtemp(prefix="lcray", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    gcs, m1, m2 = _free_port(), _free_port(), _free_port()
    ref_port, ray_port = _free_port(), _free_port()
    log = open(tmp_path / "servers.log", "wb")
    ref = served = None
    t0 = time.monotonic()
    try:
        # the reference: one plain `llamacpy serve` (started first; it runs while the cluster starts)
        ref = _start_server([*common, "--port", str(ref_port)], log)
        head = [_ray_bin(), "start", "--head", "--num-cpus", "1", "--port", str(gcs), "--node-ip-address",
                "127.0.0.1", "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp,
                "--metrics-export-port", str(m1)]
        subprocess.run(head, env=_env(), stdout=log, stderr=subprocess.STDOUT, check=True, timeout=120)
        worker = [_ray_bin(), "start", "--address", f"127.0.0.1:{gcs}", "--num-cpus", "1", "--node-ip-address",
                  "127.0.0.1", "--metrics-export-port", str(m2)]
        subprocess.run(worker, env=_env(), stdout=log, stderr=subprocess.STDOUT, check=True, timeout=120)
        served = _start_server([*common, "--port", str(ray_port), "--ray", "--ray-address", f"127.0.0.1:{gcs}",
                                "--replicas", "2", "--api-key", API_KEY, "--metrics"], log)
        _wait(lambda: _healthy(ref_port), 120, "the reference server")
        ref_client = openai.OpenAI(base_url=f"http://127.0.0.1:{ref_port}/v1", api_key="x", max_retries=0,
                                   timeout=60)
        jobs = _jobs(40)
        expected = {(k, i): _ask(ref_client, k, i) for k, i in set(jobs)}
        long_jobs = [(k, i) for k, i in _jobs(24)]
        expected_long = {(k, i): _ask(ref_client, k, i, n_tok=160) for k, i in set(long_jobs)}
        _stop(ref)
        _wait(lambda: _healthy(ray_port) or served.poll() is not None, 240, "the Ray Serve endpoint", 2.0)
        assert served.poll() is None, "llamacpy serve --ray exited"
        assert len(_replica_pids()) == 2
        base = f"http://127.0.0.1:{ray_port}"

        # the API key: checked by the server's own gate; /health and /v1/models stay public
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "hi", "max_tokens": 1}, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{base}/v1/models", timeout=30).status_code == 200
        auth = {"Authorization": f"Bearer {API_KEY}"}
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=120)

        # 40 concurrent requests, half streamed: all answered, equal to the single server at temperature 0
        with cf.ThreadPoolExecutor(40) as ex:
            answers = list(ex.map(lambda j: _ask(client, *j), jobs))
        for j, a in zip(jobs, answers):
            assert a == expected[j], f"{j}: {a!r} != {expected[j]!r}"
        # both replicas used, as Ray's Prometheus export (one exporter per node) reports each replica's requests
        _wait(lambda: len(_exported(m1, m2, "ray_llamacpp_requests_total")) >= 2, 60,
              "two replicas with requests in Ray's Prometheus export", 3.0)
        slots = httpx.get(f"{base}/slots", headers=auth, timeout=30).json()
        assert len({s["replica"] for s in slots if s.get("replica_served", 0) > 0}) == 2, slots

        # prefix affinity: a repeated long prompt goes back to the replica (and slot) holding it
        for w in ("river", "mountain", "garden", "castle"):
            p = f"In a small house near the {w} lived an old man and his dog. Every morning they walked " \
                f"to the {w} and back, and every evening they sat by the fire and"
            n_prompt = len(httpx.post(f"{base}/tokenize", headers=auth, json={"content": p, "add_special": True},
                                      timeout=30).json()["tokens"])
            assert n_prompt >= 32
            body = {"prompt": p, "max_tokens": 4, "temperature": 0}
            first = httpx.post(f"{base}/v1/completions", headers=auth, json=body, timeout=60).json()
            again = httpx.post(f"{base}/v1/completions", headers=auth, json=body, timeout=60).json()
            assert again["choices"][0]["text"] == first["choices"][0]["text"]
            # evaluated again: at most the tokens after the cached prefix (the engine re-reads >= 1 token)
            assert again["timings"]["prompt_n"] < n_prompt // 2, (w, first["timings"], again["timings"])

        # kill one replica mid-load: every request answered or failed cleanly; a new replica replaces it
        victim = _replica_pids()[0]
        outcomes: list = []

        def guarded(j):
            try:
                return ("ok", j, _ask(client, *j, n_tok=160))
            except openai.APIStatusError as e:  # an HTTP error response in our error shape
                return ("http_error", j, e.status_code, e.body)
            except openai.APIError as e:  # an SSE error event
                return ("stream_error", j, str(e))

        with cf.ThreadPoolExecutor(24) as ex:
            futs = [ex.submit(guarded, j) for j in long_jobs]
            time.sleep(1.5)
            os.kill(victim, signal.SIGKILL)
            outcomes = [f.result(timeout=180) for f in futs]
        for o in outcomes:
            if o[0] == "ok":
                assert o[2] == expected_long[o[1]], o
            elif o[0] == "http_error":
                assert o[2] in (500, 503) and isinstance(o[3], dict) and "message" in o[3], o
            else:
                assert "replica" in o[2] or "unavailable" in o[2].lower(), o
        assert sum(o[0] == "ok" for o in outcomes) >= len(outcomes) // 2, outcomes
        pids = _wait(lambda: (lambda p: p if len(p) == 2 and victim not in p else None)(_replica_pids()), 120,
                     "a replacement replica")
        assert victim not in pids
        assert _ask(client, "completion", 0) == expected[("completion", 0)]  # the endpoint stayed up

        m = httpx.get(f"{base}/metrics", headers=auth, timeout=30).text
        assert "llamacpp:tokens_predicted_total" in m
        _stop(served)  # deletes the app: its replicas go, their CPUs are free again
        _wait(lambda: not _replica_pids(), 60, "the fixed replicas to stop")

        # autoscaling on queue length: 1 replica of 1 slot, 8 clients -> Ray adds the second replica
        auto_port = _free_port()
        served = _start_server(["-m", model, "-np", "1", "-c", "512", "-t", "1", "--port", str(auto_port), "--ray",
                                "--ray-address", f"127.0.0.1:{gcs}", "--min-replicas", "1", "--max-replicas", "2"],
                               log)
        _wait(lambda: _healthy(auto_port) or served.poll() is not None, 240, "the autoscaling endpoint", 2.0)
        assert served.poll() is None and len(_replica_pids()) == 1
        body = {"prompt": "Once upon a time", "max_tokens": 300, "ignore_eos": True, "temperature": 0}
        deadline = time.monotonic() + 120
        codes: list = []
        with cf.ThreadPoolExecutor(8) as ex:
            while len(_replica_pids()) < 2 and time.monotonic() < deadline:
                codes += ex.map(lambda _: httpx.post(f"http://127.0.0.1:{auto_port}/v1/completions", json=body,
                                                     timeout=120).status_code, range(8))
        assert len(_replica_pids()) == 2, "no second replica under a queue of 8 requests on 1 slot"
        assert codes and all(c == 200 for c in codes), codes
    finally:
        _stop(served)
        _stop(ref)
        subprocess.run([_ray_bin(), "stop", "--force"], env=_env(), stdout=log, stderr=subprocess.STDOUT,
                       timeout=120)
        log.close()
        deadline = time.monotonic() + 30
        while _ray_processes() and time.monotonic() < deadline:
            time.sleep(1)
        left = _ray_processes()
        print(f"cluster test: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    assert not left, f"Ray processes left behind: {left}"
