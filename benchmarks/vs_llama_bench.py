"""Same-run speed table: `llamacpy bench` against llama.cpp's own `llama-bench` binary, per file, thread count and
SIMD level.

Usage:
    python benchmarks/vs_llama_bench.py --llama-bench PATH/llama-bench -m A.gguf [-m B.gguf ...]
        [-p 512] [-n 128] [-t 1,2] [-r 2] [--isa avx512vnni,avx2] [--json out.json]

For each file and thread count: llama-bench, then llamacpy at each level (LLAMACPY_ISA forced; `detected` = no
override), then llama-bench again; the llama.cpp figure is the mean of its two runs, so load drift on a shared
machine hits both engines alike. Prints one markdown row per (file, threads, test, level) with both t/s and the
ratio, plus the CPU model and the load average before and after. Both tools run as subprocesses with -o json.
Owns: running and tabulating. Must not: compute anything itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def _json(cmd: list[str], env: dict | None = None) -> list[dict]:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    out = r.stdout
    return json.loads(out[out.index("["):])


def _key(rec: dict) -> str:
    return f"pp{rec['n_prompt']}" if rec["n_gen"] == 0 else f"tg{rec['n_gen']}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("-m", "--model", action="append", required=True)
    ap.add_argument("-p", default="512")
    ap.add_argument("-n", default="128")
    ap.add_argument("-t", default="2")
    ap.add_argument("-r", default="2")
    ap.add_argument("--isa", default="detected", help="comma-separated LLAMACPY_ISA levels; 'detected' = no override")
    ap.add_argument("--json", help="write every record here")
    a = ap.parse_args(argv)
    print(f"CPU: {_cpu()}, {os.cpu_count()} logical CPUs; load before: {_load()}", flush=True)
    print("| file | threads | test | level | llamacpy t/s | llama.cpp t/s | ratio |\n|---|---:|---|---|---:|---:|---:|",
          flush=True)
    records = []
    for model in a.model:
        for t in a.t.split(","):
            common = ["-p", a.p, "-n", a.n, "-t", t, "-r", a.r, "-o", "json"]
            base = [a.llama_bench, "-m", model] + common
            ref = _json(base)
            ours = {}
            for level in a.isa.split(","):
                env = dict(os.environ)
                env.pop("LLAMACPY_ISA", None)
                if level != "detected":
                    env["LLAMACPY_ISA"] = level
                ours[level] = _json([sys.executable, "-m", "llamacpy", "bench", "-m", model] + common, env)
            ref += _json(base)
            ref_ts = {}
            for rec in ref:
                ref_ts.setdefault(_key(rec), []).append(rec["avg_ts"])
            for level, recs in ours.items():
                for rec in recs:
                    k = _key(rec)
                    lc = statistics.fmean(ref_ts[k])
                    row = {"file": os.path.basename(model), "threads": int(t), "test": k,
                           "level": rec.get("isa", level), "llamacpy_ts": rec["avg_ts"], "llamacpp_ts": lc,
                           "llamacpp_runs": ref_ts[k], "ratio": rec["avg_ts"] / lc}
                    records.append(row)
                    print(f"| {row['file']} | {t} | {k} | {row['level']} | {row['llamacpy_ts']:.2f} | {lc:.2f} "
                          f"| {row['ratio']:.2f}x |", flush=True)
    print(f"load after: {_load()}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpu": _cpu(), "records": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
