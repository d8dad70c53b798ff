"""Serving benchmark: aggregate generation tokens/s with 1, 2, 4, 8 concurrent clients, and time to first token
of a short request while a long prompt is processed on another slot -- for `llamacpy serve` and, when given,
llama.cpp's `llama-server` on the same file, in the same run.

    python benchmarks/bench_server.py -m MODEL.gguf [-np 8] [-c 8192] [-t 2] [--clients 1,2,4,8] [-n 64]
        [--llama-server PATH/llama-server] [--json out.json] [--stream] [--rounds K]

Each client sends `--requests` /completion requests one after another (distinct prompts, temperature 0,
ignore_eos, n_predict -n); aggregate tokens/s = all generated tokens / wall time of the whole round. TTFT: a
short streamed request is sent 50 ms after a ~1,000-token prompt starts on another slot; reported next to the
same short request's TTFT on an idle server. Both servers get the same flags (-np, -c, -t). With --rounds K (> 1)
and --llama-server, both servers are up at once (each idle while the other is measured) and every client count
is measured K times on each, in turn (the order alternating), the best round counting for each: on a host whose
memory speed moves minute to minute, one server's whole run can otherwise land in a slow minute and the other's
in a fast one (measured: our 1-client figure 31-43 t/s between two runs 15 minutes apart). With --stream the
throughput rounds stream their tokens (SSE, `stream: true`, as chat clients do; tokens counted from the final
event's tokens_predicted) -- the per-token HTTP work then runs beside the engine thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

PROMPTS = ["Once upon a time", "The little dog ran to", "Tom and Sue went to the park. They", "One day, a bird",
           "Lily had a big red ball and", "The sun was hot, so", "Max wanted a cake. He", "The old tree said"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, cmd: list[str], env: dict | None = None):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+b", prefix=f"bench-{name}-", suffix=".log", delete=False)
        full_env = dict(os.environ, **(env or {}))
        self.proc = subprocess.Popen(cmd + ["--host", "127.0.0.1", "--port", str(self.port)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env)

    def wait_ready(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {Path(self.log.name).read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready in {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        os.unlink(self.log.name)


async def completion(h: httpx.AsyncClient, url: str, prompt, n: int) -> int:
    r = await h.post(url + "/completion", json={"prompt": prompt, "n_predict": n, "temperature": 0,
                                                "ignore_eos": True, "cache_prompt": False})
    r.raise_for_status()
    return int(r.json()["tokens_predicted"])


async def streamed_completion(h: httpx.AsyncClient, url: str, prompt, n: int) -> int:
    body = {"prompt": prompt, "n_predict": n, "temperature": 0, "ignore_eos": True, "cache_prompt": False,
            "stream": True}
    async with h.stream("POST", url + "/completion", json=body) as r:
        r.raise_for_status()
        last = None
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                last = line
    final = json.loads(last[len("data: "):])
    return int(final.get("tokens_predicted") or final.get("timings", {}).get("predicted_n", 0))


async def throughput(url: str, clients: int, requests: int, n: int, stream: bool = False) -> float:
    completion_fn = streamed_completion if stream else completion
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as h:
        await completion_fn(h, url, "Hi", 2)  # warm-up

        async def client(c: int) -> int:
            total = 0
            for r in range(requests):
                total += await completion_fn(h, url, PROMPTS[(c * requests + r) % len(PROMPTS)], n)
            return total

        t0 = time.perf_counter()
        tokens = await asyncio.gather(*(client(c) for c in range(clients)))
        return sum(tokens) / (time.perf_counter() - t0)


async def ttft(h: httpx.AsyncClient, url: str, prompt: str) -> float:
    t0 = time.perf_counter()
    async with h.stream("POST", url + "/completion", json={"prompt": prompt, "n_predict": 4, "temperature": 0,
                                                           "stream": True, "cache_prompt": False}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                return time.perf_counter() - t0
    raise RuntimeError("no event")


async def ttft_under_long_prompt(url: str, n_long: int) -> tuple[float, float]:
    async with httpx.AsyncClient(timeout=600) as h:
        alone = min([await ttft(h, url, "The cat") for _ in range(3)])
        long_prompt = [1] + [410 + (i % 50) for i in range(n_long - 1)]  # token ids: no tokenizer differences
        long_task = asyncio.ensure_future(h.post(url + "/completion", json={
            "prompt": long_prompt, "n_predict": 1, "temperature": 0, "cache_prompt": False}))
        await asyncio.sleep(0.05)
        busy = await ttft(h, url, "The cat")
        if long_task.done():
            long_task.result().raise_for_status()
        else:  # only the short request's TTFT is measured: drop the long one (its client goes away)
            long_task.cancel()
            await asyncio.gather(long_task, return_exceptions=True)
        return alone, busy


def warm_up(srv: Server, args) -> None:
    """An untimed round at the largest client count: first-use kernel compiles and weight repacks are start-up
    costs (measured by benchmarks/cold_start.py), not serving speed."""
    asyncio.run(throughput(srv.url, max(args.clients), 1, min(args.n_predict, 8)))


def measure_ttft(srv: Server, args, res: dict) -> None:
    """res gets the TTFT of a short request alone and beside a long prompt, and the load after."""
    alone, busy = asyncio.run(ttft_under_long_prompt(srv.url, args.long_prompt))
    res["ttft_alone_ms"], res["ttft_busy_ms"] = 1e3 * alone, 1e3 * busy
    res["load_after"] = os.getloadavg()[0]  # 1-minute load average: a shared machine's other jobs show here
    print(f"  {srv.name}: TTFT alone {1e3 * alone:.0f} ms, beside a {args.long_prompt}-token prompt "
          f"{1e3 * busy:.0f} ms", file=sys.stderr, flush=True)


def run_server(srv: Server, args) -> dict:
    srv.wait_ready()
    res = {"server": srv.name, "tokens_per_s": {}, "load_before": os.getloadavg()[0]}
    warm_up(srv, args)
    for k in args.clients:
        res["tokens_per_s"][k] = asyncio.run(throughput(srv.url, k, args.requests, args.n_predict, args.stream))
        print(f"  {srv.name}: {k} client(s): {res['tokens_per_s'][k]:.1f} t/s", file=sys.stderr, flush=True)
    measure_ttft(srv, args, res)
    return res


def print_table(results: list, args) -> None:
    print(f"| server | {' | '.join(f'{k} client(s) t/s' for k in args.clients)} | {max(args.clients)}/1 | "
          f"TTFT alone ms | TTFT beside {args.long_prompt}-token prompt ms | load before/after |")
    print("|---" * (len(args.clients) + 5) + "|")
    for r in results:
        tps = r["tokens_per_s"]
        print(f"| {r['server']} | {' | '.join(f'{tps[k]:.1f}' for k in args.clients)} | "
              f"{tps[max(args.clients)] / tps[min(args.clients)]:.2f}x | {r['ttft_alone_ms']:.0f} | "
              f"{r['ttft_busy_ms']:.0f} | {r['load_before']:.1f} / {r['load_after']:.1f} |")


def write_json(results: list, args) -> None:
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"model": args.model, "args": vars(args), "results": results}, f, indent=1)
        os.replace(tmp, args.json)


def _ours(common: list) -> "Server":
    return Server("llamacpy", [sys.executable, "-m", "llamacpy", "serve", *common, "--no-webui"],
                  env={"PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")})


def run_interleaved(args, common: list) -> list:
    """Both servers up at once; each client count measured args.rounds times on each, in turn (the order
    alternating round by round); the best round per server and client count counts."""
    srvs = [_ours(common), Server("llama-server", [args.llama_server, *common, "--no-webui"])]
    try:
        res = []
        for srv in srvs:
            srv.wait_ready()
            warm_up(srv, args)
            res.append({"server": srv.name, "tokens_per_s": {}, "rounds": {}, "load_before": os.getloadavg()[0]})
        for k in args.clients:
            for r in range(args.rounds):
                for i in (0, 1) if r % 2 == 0 else (1, 0):
                    tps = asyncio.run(throughput(srvs[i].url, k, args.requests, args.n_predict, args.stream))
                    res[i]["rounds"].setdefault(k, []).append(tps)
                    print(f"  {srvs[i].name}: {k} client(s), round {r + 1}: {tps:.1f} t/s", file=sys.stderr,
                          flush=True)
            for i in (0, 1):
                res[i]["tokens_per_s"][k] = max(res[i]["rounds"][k])
        for i, srv in enumerate(srvs):
            measure_ttft(srv, args, res[i])
        ours, ref = res[0]["tokens_per_s"], res[1]["tokens_per_s"]
        print("best of %d rounds; ours / llama-server: %s" % (args.rounds, ", ".join(
            f"{k} client(s) {ours[k] / ref[k]:.2f}x" for k in args.clients)))
        return res
    finally:
        for srv in srvs:
            srv.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-np", "--parallel", type=int, default=8)
    p.add_argument("-c", "--ctx-size", type=int, default=8192)
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("-n", "--n-predict", type=int, default=64)
    p.add_argument("--requests", type=int, default=2, help="requests per client")
    p.add_argument("--clients", default="1,2,4,8")
    p.add_argument("--long-prompt", type=int, default=1000)
    p.add_argument("--llama-server", default=None, help="path of llama.cpp's llama-server to compare with")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--stream", action="store_true", help="throughput rounds stream their tokens (SSE)")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --llama-server: both servers up at once, each client count measured this many "
                        "times on each in turn, the best counting")
    args = p.parse_args(argv)
    args.clients = [int(x) for x in args.clients.split(",")]
    common = ["-m", args.model, "-np", str(args.parallel), "-c", str(args.ctx_size)]
    if args.threads:
        common += ["-t", str(args.threads)]
    results = []
    if args.rounds > 1 and args.llama_server:
        results = run_interleaved(args, common)
        print_table(results, args)
        write_json(results, args)
        return 0
    ours = _ours(common)
    try:
        results.append(run_server(ours, args))
    finally:
        ours.stop()
    if args.llama_server:
        ref = Server("llama-server", [args.llama_server, *common, "--no-webui"])
        try:
            results.append(run_server(ref, args))
        finally:
            ref.stop()
    print_table(results, args)
    write_json(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
