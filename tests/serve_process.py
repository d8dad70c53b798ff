"""A real `llamacpy serve` subprocess on loopback for tests and benchmarks: free port, wait until ready, stop.

Owns: starting the process with the caller's flags (stderr to a temp file, so a full pipe never blocks it),
polling /health until it answers 200, and stopping it with SIGTERM (SIGKILL only if it hangs).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, model: str, *flags: str, api_key: str | None = None, env: dict | None = None,
                 command: list[str] | None = None):
        self.port = free_port()
        self.api_key = api_key
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = command or [sys.executable, "-m", "llamacpy", "serve"]
        args = cmd + ["-m", str(model), "--host", "127.0.0.1", "--port", str(self.port), *flags]
        if api_key:
            args += ["--api-key", api_key]
        full_env = dict(os.environ)
        src = str(PROJECT_ROOT / "src")
        full_env["PYTHONPATH"] = src + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        self.log = tempfile.NamedTemporaryFile("w+b", prefix="llamacpy-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=full_env,
                                     stdin=subprocess.DEVNULL)

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def wait_listening(self, timeout: float = 60.0) -> None:
        """Until the socket accepts a connection (any HTTP answer)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"server did not listen within {timeout} s:\n{self.log_text()}")

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Until /health answers 200 (the first start may JIT-compile numba kernels for minutes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready within {timeout} s:\n{self.log_text()}")

    def warm_up(self) -> None:
        """One tiny generation so that kernels are compiled before the tests start timing anything."""
        httpx.post(self.url + "/completion", json={"prompt": "Hi", "n_predict": 2, "temperature": 0},
                   headers=self.headers, timeout=600).raise_for_status()

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass
        return self.proc.returncode
