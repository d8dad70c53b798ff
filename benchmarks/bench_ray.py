"""Ray Serve benchmark: aggregate generation tokens/s with 1 vs 2 replicas on a local 2-node Ray cluster, and the
cost of Ray's hop (proxy -> ingress -> replica) against a direct `llamacpy serve`: time to first token and
single-stream tokens/s.

    python benchmarks/bench_ray.py [-m MODEL] [--clients 8] [--requests 16] [--tokens 64] [--json OUT]

Each configuration: one streamed request at a time (TTFT and tokens/s, median of --single runs), then
--requests requests from --clients concurrent clients (aggregate tokens/s = all generated tokens / wall time).
Every server: -np 2 -t 1 per replica/server; each Ray node has 1 CPU, so 2 replicas land on 2 nodes.
The cluster is a head plus a second `ray start --address` node on 127.0.0.1; `ray stop --force` at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT.parent / "shared" / "models" / "stories260K.gguf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RAY_TOKEN = secrets.token_hex(32)  # Ray's token auth, the same token for every process of the cluster


def env() -> dict:
    e = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=RAY_TOKEN)
    e["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def ray_bin() -> str:
    return os.path.join(os.path.dirname(sys.executable), "ray")


def start_server(args, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llamacpy", "serve", *args], env=env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(p) -> None:
    if p is not None and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_healthy(port: int, proc, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("server did not become healthy")


def one_stream(base: str, prompt: str, n_tok: int) -> tuple[float, float, int]:
    """-> (ttft s, wall s, generated tokens) of one streamed /v1/completions request."""
    body = {"prompt": prompt, "max_tokens": n_tok, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, n = None, 0
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            if ttft is None and d.get("choices") and d["choices"][0].get("text"):
                ttft = time.perf_counter() - t0
            if d.get("usage"):
                n = d["usage"]["completion_tokens"]
    return ttft or float("nan"), time.perf_counter() - t0, n


def measure(base: str, a) -> dict:
    one_stream(base, "Warm up", 8)
    singles = [one_stream(base, f"Once upon a time {i}", a.tokens) for i in range(a.single)]
    ttft = statistics.median(s[0] for s in singles)
    tps1 = statistics.median(s[2] / max(s[1] - s[0], 1e-9) for s in singles)
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(a.clients) as ex:
        res = list(ex.map(lambda i: one_stream(base, f"The little {i} went to", a.tokens), range(a.requests)))
    wall = time.perf_counter() - t0
    total = sum(r[2] for r in res)
    return {"ttft_ms": round(ttft * 1e3, 1), "single_tps": round(tps1, 1),
            "aggregate_tps": round(total / wall, 1), "clients": a.clients, "requests": a.requests,
            "tokens": total}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-m", "--model", default=str(DEFAULT_MODEL))
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--single", type=int, default=5)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    common = ["-m", a.model, "-np", "2", "-c", "1024", "-t", "1"]
    temp = tempfile.mkdtemp(prefix="lcrayb", dir="/tmp")
    log = open(os.path.join(temp, "bench.log"), "wb")
    results: dict = {}
    procs: list = []
    try:
        port = free_port()
        direct = start_server([*common, "--port", str(port)], log)
        procs.append(direct)
        wait_healthy(port, direct)
        results["direct"] = measure(f"http://127.0.0.1:{port}", a)
        print("direct", results["direct"], flush=True)
        stop(direct)

        gcs = free_port()
        subprocess.run([ray_bin(), "start", "--head", "--num-cpus", "1", "--port", str(gcs), "--node-ip-address",
                        "127.0.0.1", "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp],
                       env=env(), stdout=log, stderr=subprocess.STDOUT, check=True, timeout=180)
        subprocess.run([ray_bin(), "start", "--address", f"127.0.0.1:{gcs}", "--num-cpus", "1",
                        "--node-ip-address", "127.0.0.1"], env=env(), stdout=log, stderr=subprocess.STDOUT,
                       check=True, timeout=180)
        for n in (1, 2):
            port = free_port()
            srv = start_server([*common, "--port", str(port), "--ray", "--ray-address", f"127.0.0.1:{gcs}",
                                "--replicas", str(n)], log)
            procs.append(srv)
            wait_healthy(port, srv)
            results[f"ray_{n}"] = measure(f"http://127.0.0.1:{port}", a)
            print(f"ray {n} replica(s)", results[f"ray_{n}"], flush=True)
            stop(srv)
    finally:
        for pr in procs:
            stop(pr)
        subprocess.run([ray_bin(), "stop", "--force"], env=env(), stdout=log, stderr=subprocess.STDOUT, timeout=120)
        log.close()
    d, r1, r2 = results["direct"], results["ray_1"], results["ray_2"]
    print(f"hop: TTFT {d['ttft_ms']} -> {r1['ttft_ms']} ms (+{r1['ttft_ms'] - d['ttft_ms']:.1f}); single stream "
          f"{d['single_tps']} -> {r1['single_tps']} t/s; aggregate direct {d['aggregate_tps']}, 1 replica "
          f"{r1['aggregate_tps']}, 2 replicas {r2['aggregate_tps']} t/s ({r2['aggregate_tps'] / r1['aggregate_tps']:.2f}x)")
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
